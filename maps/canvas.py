"""The parts every map shares: the base map, boundaries as base layer, legends, notices, points.

All text that reaches the page goes through :func:`esc` (HTML) or
:func:`maps.payload.script_json` (inside ``<script>``); popups and tooltips are built here, on
the server, from escaped parts only.

branca renders a page by compiling each element's rendered output *again* as a Jinja template
(``Element(template=...)``), so a ``{{ … }}`` in user text would be evaluated on the server and a
``{#`` would break the page. Hence :func:`esc` also escapes ``{`` and ``script_json`` escapes a
``{`` that could open a Jinja tag; and our own elements put their data on the page through
:class:`PageData`, which skips that compilation altogether (compiling a 2 MB payload as a template
also cost more than a second at 100,000 leads).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import folium
import geopandas as gpd
import numpy as np
import shapely
from branca.element import Element, MacroElement
from folium.map import Layer
from folium.template import Template
from folium.utilities import JsCode

from maps.assets import localize
from maps.payload import script_json
from maps.style import Lang, label

__all__ = [
    "Control",
    "MapInputError",
    "PageData",
    "PointLayer",
    "RawText",
    "add_boundaries",
    "esc",
    "finish",
    "legend",
    "lonlat",
    "new_map",
    "notice",
    "popup_table",
    "require_columns",
    "to_display_geojson",
]

TEMPLATES = Path(__file__).resolve().parent / "templates"


class MapInputError(ValueError):
    """Bad input to a map renderer; the message names the field, the value and what is allowed."""


def require_columns(df: Any, name: str, columns: Iterable[str]) -> None:
    """Raise :class:`MapInputError` naming the missing columns of ``df``.

    Parameters
    ----------
    df : DataFrame
    name : str
        Argument name for the message.
    columns : iterable of str
    """
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MapInputError(f"{name} lacks columns {missing}; it has {list(df.columns)}")


def esc(value: Any) -> str:
    """HTML-escape any value for text content or a quoted attribute (None -> '').

    ``{`` becomes ``&#123;`` as well (the same character once parsed as HTML), so no user text can
    open a Jinja tag when branca compiles the page (see the module docstring).
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return html.escape(str(value), quote=True).replace("{", "&#123;")


class RawText(Element):
    """Text placed on the page exactly as given, never compiled as a Jinja template.

    Parameters
    ----------
    text : str
        Already safe for where it goes (e.g. :func:`maps.payload.script_json` output).
    """

    def __init__(self, text: str) -> None:
        super().__init__()
        self._name = "RawText"
        self._text = text

    def render(self, **kwargs: Any) -> str:
        """The text itself."""
        return self._text


class PageData:
    """Mixin for our elements: their data goes on the page as ``var <name>_<key> = <json>;``.

    Set ``self._page_data = {key: script_json(...)}``; the element's template refers to
    ``{{ this.get_name() }}_<key>``. The data is added to the page's script *before* the
    element's own script and, unlike a template's output, is not compiled by Jinja. Put the
    mixin first among the bases.
    """

    _page_data: dict[str, str]

    def render(self, **kwargs: Any) -> str:
        """Add the data variables, then render as usual."""
        figure = self.get_root()  # type: ignore[attr-defined]
        name = self.get_name()  # type: ignore[attr-defined]
        for key, text in self._page_data.items():
            figure.script.add_child(RawText(f"var {name}_{key} = {text};\n"), name=f"{name}_{key}")
        out: str = super().render(**kwargs)  # type: ignore[misc]
        return out


def popup_table(rows: Sequence[tuple[str, Any]], title: str | None = None) -> str:
    """An HTML table of (label, value) rows, every part escaped.

    Parameters
    ----------
    rows : sequence of (str, Any)
    title : str, optional

    Returns
    -------
    str
    """
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    head = f"<b>{esc(title)}</b>" if title else ""
    return f'<div class="leadgrid-tip">{head}<table>{body}</table></div>'


class Control(PageData, MacroElement):
    """A Leaflet control holding server-escaped HTML (legend, notice, list)."""

    _template = Template((TEMPLATES / "control.js").read_text(encoding="utf-8"))

    def __init__(
        self,
        html_text: str,
        *,
        position: str = "bottomright",
        role: str = "legend",
        css_class: str = "leadgrid-box",
    ) -> None:
        super().__init__()
        self._name = "LeadgridControl"
        self._page_data = {"html": script_json(html_text)}
        self.position_json = script_json(position)
        self.role_json = script_json(role)
        self.css_class_json = script_json(css_class)


def legend(
    title: str,
    items: Sequence[tuple[str, str]],
    *,
    note: str | None = None,
    dots: bool = False,
    position: str = "bottomright",
) -> Control:
    """A legend control: a title and (colour, label) rows.

    Parameters
    ----------
    title : str
    items : sequence of (colour, label)
    note : str, optional
        A smaller line under the rows.
    dots : bool, default False
        Round swatches (for point symbols) instead of squares.
    position : str, default 'bottomright'

    Returns
    -------
    Control
    """
    shape = "sw dot" if dots else "sw"
    rows = "".join(f'<div><span class="{shape}" style="background:{esc(c)}"></span>{esc(t)}</div>' for c, t in items)
    extra = f'<div class="note">{esc(note)}</div>' if note else ""
    return Control(f"<h4>{esc(title)}</h4>{rows}{extra}", position=position)


def notice(text: str, *, position: str = "topright") -> Control:
    """A visible notice on the map (e.g. too few features for a hot spot analysis).

    Parameters
    ----------
    text : str
    position : str, default 'topright'

    Returns
    -------
    Control
    """
    return Control(
        f"<b>⚠ </b>{esc(text)}",
        position=position,
        role="notice",
        css_class="leadgrid-box leadgrid-notice",
    )


class PointLayer(PageData, Layer):
    """Circle markers from a compact list; popups are server-escaped HTML.

    Parameters
    ----------
    points : list of dict
        Keys ``lat``, ``lon``, ``c`` (fill colour), ``r`` (radius px), optional ``p`` (popup
        HTML), ``t`` (tooltip HTML), ``stroke``, ``w``.
    name : str
        Layer name in the layer control (escaped here).
    """

    _template = Template((TEMPLATES / "points.js").read_text(encoding="utf-8"))

    def __init__(self, points: list[dict[str, Any]], name: str, *, show: bool = True, control: bool = True) -> None:
        # Leaflet's layer control inserts names as HTML, so the name is escaped once here.
        super().__init__(name=esc(name), overlay=True, control=control, show=show)
        self._name = "PointLayer"
        self._page_data = {"data": script_json(points)}


def to_display_geojson(gdf: gpd.GeoDataFrame, columns: Sequence[str], tolerance: float = 0.0003) -> dict[str, Any]:
    """GeoJSON for display: EPSG:4326, simplified, coordinates to 1e-5°, only ``columns``.

    Parameters
    ----------
    gdf : geopandas.GeoDataFrame
    columns : sequence of str
        Properties to keep.
    tolerance : float, default 0.0003
        Simplification tolerance in degrees (about 30 m); 0 keeps geometries as they are.

    Returns
    -------
    dict
    """
    out = gdf.to_crs(4326) if gdf.crs is not None and gdf.crs.to_epsg() != 4326 else gdf
    geom = out.geometry.values
    if tolerance > 0:
        geom = shapely.simplify(geom, tolerance, preserve_topology=True)
    geom = shapely.set_precision(geom, 1e-5)
    slim = gpd.GeoDataFrame(out[list(columns)].reset_index(drop=True), geometry=geom, crs=4326)
    data: dict[str, Any] = slim.__geo_interface__
    return data


def new_map(
    bounds: tuple[float, float, float, float],
    *,
    tiles: str | None = None,
    attribution: str | None = None,
) -> folium.Map:
    """An empty map fitted to ``bounds`` (minx, miny, maxx, maxy in lon/lat).

    Parameters
    ----------
    bounds : tuple of float
    tiles : str, optional
        XYZ URL template of a local tile server or Tianditu with its key; none by default, the
        jurisdiction boundaries are then the base layer.
    attribution : str, optional
        Required with ``tiles``.

    Returns
    -------
    folium.Map

    Raises
    ------
    MapInputError
        ``tiles`` without ``attribution`` or not an http(s) URL template.
    """
    m = folium.Map(location=None, tiles=None, control_scale=True, prefer_canvas=False, zoom_snap=0.25)
    # Without a tile layer Leaflet knows no zoom range, and the marker cluster needs one.
    m.options["maxZoom"] = 18
    m.options["minZoom"] = 5
    if tiles is not None:
        if not attribution:
            raise MapInputError(f"tiles={tiles!r} needs an attribution text")
        if not (tiles.startswith(("http://", "https://", "/")) and "{z}" in tiles):
            raise MapInputError(f"tiles={tiles!r}; expected an http(s) or /path URL template with {{z}}/{{x}}/{{y}}")
        folium.TileLayer(tiles=tiles, attr=esc(attribution), name="tiles", control=False).add_to(m)
    minx, miny, maxx, maxy = bounds
    if not np.all(np.isfinite(bounds)):
        minx, miny, maxx, maxy = 116.4, 33.7, 118.6, 34.9  # Xuzhou, when there is nothing to show
    m.fit_bounds([[miny, minx], [maxy, maxx]])
    return m


def add_boundaries(
    m: folium.Map,
    areas: gpd.GeoDataFrame,
    *,
    lang: str | Lang = "zh",
    name_column: str = "name",
    fill: bool = True,
) -> None:
    """Jurisdiction boundaries as the base layer (grey outlines, names on hover).

    Parameters
    ----------
    m : folium.Map
    areas : geopandas.GeoDataFrame
        Polygons with a ``name_column``.
    lang : str, default 'zh'
    name_column : str, default 'name'
    fill : bool, default True
        A pale fill so that the city's shape reads as the base map.
    """
    require_columns(areas, "areas", [name_column])
    gj = to_display_geojson(areas.assign(tip=areas[name_column].map(esc)), ["tip"])
    style = {
        "color": "#7a7a7a",
        "weight": 0.8,
        "fillColor": "#ffffff",
        "fillOpacity": 0.85 if fill else 0.0,
    }
    folium.GeoJson(
        gj,
        name=esc(label("boundaries", lang)),
        control=False,
        style_function=lambda _f: style,
        on_each_feature=JsCode("function (f, layer) { layer.bindTooltip(f.properties.tip, {sticky: true}); }"),
    ).add_to(m)


def finish(m: folium.Map, *, layer_control: bool = True) -> folium.Map:
    """Add the layer control and point every asset at our own server.

    Parameters
    ----------
    m : folium.Map
    layer_control : bool, default True

    Returns
    -------
    folium.Map
    """
    if layer_control:
        folium.LayerControl(collapsed=False, position="topright").add_to(m)
    return localize(m)


def lonlat(points: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of ``points``: its ``lon``/``lat`` columns, or else its point geometry.

    The map queries hand over plain ``lon``/``lat`` float columns (building 100,000 shapely
    points only to read their coordinates back cost a quarter of a second); a GeoDataFrame of
    EPSG:4326 points works as well.

    Parameters
    ----------
    points : DataFrame or GeoDataFrame
    name : str
        Argument name for messages.

    Returns
    -------
    lon, lat : numpy.ndarray of float

    Raises
    ------
    MapInputError
        Neither ``lon``/``lat`` nor a geometry; non-finite coordinates; a CRS other than
        EPSG:4326; geometries other than points.
    """
    if "lon" in points.columns and "lat" in points.columns:
        lon = points["lon"].to_numpy(dtype=float)
        lat = points["lat"].to_numpy(dtype=float)
        bad = ~(np.isfinite(lon) & np.isfinite(lat))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise MapInputError(f"{name}.lon/lat at row {i} is ({lon[i]}, {lat[i]}); finite degrees are required")
        return lon, lat
    if not isinstance(points, gpd.GeoDataFrame):
        raise MapInputError(f"{name} has neither lon/lat columns nor a geometry; it has {list(points.columns)}")
    if len(points) and points.crs is not None and points.crs.to_epsg() != 4326:
        raise MapInputError(f"{name}.crs={points.crs.to_string()!r}; expected EPSG:4326 (storage)")
    kinds = set(points.geom_type.unique()) - {"Point"}
    if kinds:
        raise MapInputError(f"{name}.geometry has {sorted(kinds)}; only Point is allowed")
    return points.geometry.x.to_numpy(), points.geometry.y.to_numpy()


def bounds_of(*frames: Any) -> tuple[float, float, float, float]:
    """Joint lon/lat bounds of non-empty frames (NaNs when all are empty).

    A frame is a GeoDataFrame or a frame of points with ``lon``/``lat`` columns.
    """
    boxes = []
    for f in frames:
        if f is None or not len(f):
            continue
        if not isinstance(f, gpd.GeoDataFrame) or ("lon" in f.columns and "lat" in f.columns):
            lon, lat = lonlat(f, "points")
            boxes.append(np.array([lon.min(), lat.min(), lon.max(), lat.max()]))
        else:
            boxes.append(f.to_crs(4326).total_bounds)
    if not boxes:
        return (np.nan, np.nan, np.nan, np.nan)
    arr = np.vstack(boxes)
    return (
        float(arr[:, 0].min()),
        float(arr[:, 1].min()),
        float(arr[:, 2].max()),
        float(arr[:, 3].max()),
    )
