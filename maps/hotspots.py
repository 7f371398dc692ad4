"""Hotspot map: Gi* classes on townships and on a grid, plus a kernel-density heat layer.

The caller filters leads by responsible body and time window; this module aggregates and draws.
With too few aggregated features the map says so in a visible notice instead of drawing classes.
"""

from __future__ import annotations

import folium
import geopandas as gpd
import numpy as np
import pandas as pd
from folium.plugins import HeatMap
from folium.utilities import JsCode
from pyproj import CRS

from geo.hotspots import MIN_FEATURES, HotspotResult, hotspot_layers
from maps.canvas import (
    MapInputError,
    add_boundaries,
    bounds_of,
    esc,
    finish,
    legend,
    lonlat,
    new_map,
    notice,
    to_display_geojson,
)
from maps.style import HOTSPOT_COLORS, Lang, label, parse_lang

__all__ = ["render_hotspots"]

_BIN_KEYS = {
    3: "hot_99",
    2: "hot_95",
    1: "hot_90",
    0: "not_sig",
    -1: "cold_90",
    -2: "cold_95",
    -3: "cold_99",
}


def _add_classes(m: folium.Map, res: HotspotResult, name: str, lg: Lang, *, show: bool, name_col: str | None) -> None:
    f = res.features
    bins = f["gi_bin"].to_numpy(dtype=int)
    names = f[name_col].map(esc) if name_col else [""] * len(f)
    word = esc(label("count", lg))
    tips = [
        f"<b>{n}</b> {esc(label(_BIN_KEYS[b], lg))}<br>{word}: {int(c)}, z = {z:.2f}"
        for n, b, c, z in zip(names, bins, f["count"], f["z"], strict=False)
    ]
    # Not significant features are drawn faintly: the eye goes to the classes that mean something.
    gj = to_display_geojson(
        f.assign(tip=tips, fill=[HOTSPOT_COLORS[b] for b in bins], b=bins),
        ["tip", "fill", "b"],
        tolerance=0.0,
    )
    folium.GeoJson(
        gj,
        name=esc(name),
        show=show,
        style_function=lambda ft: {
            "fillColor": ft["properties"]["fill"],
            "color": "#888888",
            "weight": 0.4,
            "fillOpacity": 0.8 if ft["properties"]["b"] != 0 else 0.25,
        },
        on_each_feature=JsCode("function (f, layer) { layer.bindTooltip(f.properties.tip, {sticky: true}); }"),
    ).add_to(m)


def render_hotspots(
    leads: pd.DataFrame,
    townships: gpd.GeoDataFrame,
    *,
    crs: CRS | int | str = 4527,
    cell_size: float | None = None,
    township_counts: str | None = None,
    unit: str | None = None,
    lang: str | Lang = "zh",
    tiles: str | None = None,
    attribution: str | None = None,
) -> folium.Map:
    """Significant hot and cold spots (Gi*, FDR) on townships and a grid, and a heat layer.

    Parameters
    ----------
    leads : DataFrame or geopandas.GeoDataFrame
        Points as ``lon``/``lat`` columns or an EPSG:4326 point geometry, already filtered to
        one body / time window by the caller.
    townships : geopandas.GeoDataFrame
        Polygons with ``code`` and ``name``.
    crs : pyproj.CRS, int or str, default 4527
        Metric CRS for the grid (CGCS2000 GK zone 39 for Xuzhou).
    cell_size : float, optional
        Grid cell in metres; chosen from the data when omitted.
    township_counts : str, optional
        Column of ``townships`` holding the number of ``leads`` in each township as the database
        counted them (:func:`layers.mapdata.hotspot_frames`: the township codes of the same
        leads). When omitted, the leads are counted into the polygons point by point.
    unit : {'township', 'grid'}, optional
        Which aggregation is shown when the map opens (the other one stays in the layer
        control). By default the townships, unless they show no significant class.
    lang : {'zh', 'en'}, default 'zh'
    tiles, attribution : str, optional

    Returns
    -------
    folium.Map
        Layers: township classes, grid classes (hidden at first), heat; a legend, and a notice
        for any aggregation with fewer than ``MIN_FEATURES`` features.
    """
    lg = parse_lang(lang)
    if unit not in (None, "township", "grid"):
        raise MapInputError(f"unit={unit!r}; allowed: 'township', 'grid'")
    if township_counts is not None and township_counts not in townships.columns:
        raise MapInputError(f"township_counts={township_counts!r} is not a column of townships")
    lon, lat = lonlat(leads, "leads")
    m = new_map(bounds_of(townships, leads), tiles=tiles, attribution=attribution)
    add_boundaries(m, townships, lang=lg)
    layers = hotspot_layers(
        lon,
        lat,
        townships,
        township_counts=None if township_counts is None else townships[township_counts].to_numpy(),
        crs=crs,
        cell_size=cell_size,
    )
    town, grid = layers.township, layers.grid
    notes = []
    # Show the grid first when townships are too coarse to show any significant class.
    town_sig = town.enough and bool((town.features["gi_bin"] != 0).any())
    if unit is not None:
        town_sig = unit == "township"
    for res, key, show, col in (
        (town, "hot_townships", town_sig, "name"),
        (grid, "hot_grid", not town_sig, None),
    ):
        if res.enough:
            _add_classes(m, res, label(key, lg), lg, show=show, name_col=col)
        else:
            text = label("too_few", lg).format(n=len(res.features), min=MIN_FEATURES)
            notes.append(f"{label(key, lg)}: {text}")
    if notes:
        notice(" ".join(notes)).add_to(m)
    if len(layers.heat):
        kde = layers.heat
        heat_layer = HeatMap(
            [],
            name=esc(label("heat", lg)),
            show=False,
            radius=18,
            blur=22,
            min_opacity=0.25,
            # leaflet.heat divides intensity by 2**(max_zoom - zoom); a city view is zoom 9-10
            max_zoom=10,
        )
        # Set after construction: HeatMap checks each of the few thousand [lat, lon, w] rows in
        # Python (a quarter of the page's CPU); these are finite numbers we computed.
        heat_layer.data = np.column_stack([kde["lat"], kde["lon"], kde["weight"]]).round(5).tolist()
        heat_layer.add_to(m)
    cell = f"{label('cell_size', lg)}: {grid.cell_size:,.0f} m" if grid.cell_size else None
    legend(
        label("legend_hotspot", lg),
        [(HOTSPOT_COLORS[b], label(_BIN_KEYS[b], lg)) for b in (3, 2, 1, 0, -1, -2, -3)],
        note=cell,
    ).add_to(m)
    return finish(m)
