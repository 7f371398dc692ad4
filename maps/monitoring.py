"""Monitoring map: online monitoring points coloured by their latest status."""

from __future__ import annotations

import folium
import geopandas as gpd
import pandas as pd

from maps.canvas import (
    PointLayer,
    add_boundaries,
    bounds_of,
    esc,
    finish,
    legend,
    new_map,
    notice,
    popup_table,
    require_columns,
)
from maps.style import MONITORING_COLORS, Lang, label, parse_lang

__all__ = ["MONITORING_STATUSES", "render_monitoring"]

MONITORING_STATUSES = tuple(MONITORING_COLORS)


def render_monitoring(
    points: gpd.GeoDataFrame,
    areas: gpd.GeoDataFrame | None = None,
    *,
    lang: str | Lang = "zh",
    tiles: str | None = None,
    attribution: str | None = None,
) -> folium.Map:
    """Monitoring points with their latest status (normal, exceeding, missing, offline).

    Parameters
    ----------
    points : geopandas.GeoDataFrame
        EPSG:4326 points with ``code``, ``name``, ``status`` (one of
        :data:`MONITORING_STATUSES`; others show as *offline*), optional ``latest`` (reading
        text) and ``time`` (datetime of the latest reading).
    areas : geopandas.GeoDataFrame, optional
        Jurisdictions drawn as the base layer (``name`` column).
    lang : {'zh', 'en'}, default 'zh'
    tiles, attribution : str, optional

    Returns
    -------
    folium.Map
        One layer per status, exceeding points drawn larger and on top.
    """
    lg = parse_lang(lang)
    require_columns(points, "points", ["code", "name", "status", "geometry"])
    m = new_map(bounds_of(areas, points), tiles=tiles, attribution=attribution)
    if areas is not None:
        add_boundaries(m, areas, lang=lg)
    status = points["status"].where(points["status"].isin(MONITORING_STATUSES), "offline")
    # Exceeding last, so those markers sit on top of the others.
    for st in ("offline", "missing", "normal", "exceeding"):
        sub = points[status == st]
        pts = []
        for _, r in sub.iterrows():  # monitoring points number in the hundreds, not 100,000
            rows = [(label("code", lg), r["code"]), (label("status", lg), label(st, lg))]
            if "latest" in sub.columns and pd.notna(r["latest"]):
                rows.append((label("latest", lg), r["latest"]))
            if "time" in sub.columns and pd.notna(r["time"]):
                t = pd.Timestamp(r["time"])
                t = t.tz_localize("UTC") if t.tzinfo is None else t
                rows.append((label("time", lg), t.tz_convert("Asia/Shanghai").strftime("%Y-%m-%d %H:%M")))
            pts.append(
                {
                    "lat": r.geometry.y,
                    "lon": r.geometry.x,
                    "c": MONITORING_COLORS[st],
                    "r": 9 if st == "exceeding" else 6,
                    "p": popup_table(rows, title=str(r["name"])),
                    "t": esc(r["name"]),
                }
            )
        PointLayer(pts, f"{label(st, lg)} ({len(sub)})").add_to(m)
    if len(points) == 0:
        # an empty map must not look like "all fine"
        notice(label("no_points", lg)).add_to(m)
    legend(
        label("legend_monitoring", lg),
        [(MONITORING_COLORS[s], label(s, lg)) for s in ("normal", "exceeding", "missing", "offline")],
        dots=True,
    ).add_to(m)
    return finish(m)
