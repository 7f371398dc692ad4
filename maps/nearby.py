"""Nearby map for field staff: my position, a radius ring, the cases within it, nearest first."""

from __future__ import annotations

from urllib.parse import quote

import folium
import geopandas as gpd
import numpy as np
import pandas as pd
from pyproj import CRS, Transformer

from maps.canvas import (
    Control,
    MapInputError,
    PointLayer,
    esc,
    finish,
    legend,
    new_map,
    popup_table,
    require_columns,
)
from maps.style import STATUS_COLORS, STATUSES, Lang, label, parse_lang

__all__ = ["nearby_cases", "render_nearby"]


def nearby_cases(
    cases: gpd.GeoDataFrame, lon: float, lat: float, radius_m: float, *, crs: CRS | int | str = 4527
) -> gpd.GeoDataFrame:
    """Cases within ``radius_m`` metres of (lon, lat), sorted by distance then deadline.

    Parameters
    ----------
    cases : geopandas.GeoDataFrame
        Points in EPSG:4326 with a ``deadline`` column.
    lon, lat : float
        Staff position (EPSG:4326).
    radius_m : float
        Positive radius in metres.
    crs : pyproj.CRS, int or str, default 4527
        Metric CRS for distances.

    Returns
    -------
    geopandas.GeoDataFrame
        The cases within, with a ``distance_m`` column.

    Raises
    ------
    MapInputError
        Non-positive radius, position out of range, missing ``deadline``.
    """
    if not (np.isfinite(radius_m) and radius_m > 0):
        raise MapInputError(f"radius_m={radius_m!r}; expected a positive number of metres")
    if not (np.isfinite(lon) and np.isfinite(lat) and abs(lon) <= 180 and abs(lat) <= 90):
        raise MapInputError(f"position=({lon}, {lat}); expected lon in [-180, 180], lat in [-90, 90]")
    require_columns(cases, "cases", ["deadline", "geometry"])
    tr = Transformer.from_crs(4326, CRS.from_user_input(crs), always_xy=True)
    x0, y0 = tr.transform(lon, lat)
    x, y = tr.transform(cases.geometry.x.to_numpy(), cases.geometry.y.to_numpy())
    dist = np.hypot(np.asarray(x) - x0, np.asarray(y) - y0)
    out = cases.assign(distance_m=dist)
    out = out[out["distance_m"] <= radius_m]
    out = out.assign(_dl=pd.to_datetime(out["deadline"], utc=True, errors="coerce"))
    out = out.sort_values(["distance_m", "_dl"], kind="stable", na_position="last")
    return out.drop(columns="_dl")


def _fmt_deadline(v: object) -> str:
    ts = pd.to_datetime(v, utc=True, errors="coerce")
    if pd.isna(ts):
        return ""
    return ts.tz_convert("Asia/Shanghai").strftime("%Y-%m-%d %H:%M")


def render_nearby(
    cases: gpd.GeoDataFrame,
    lon: float,
    lat: float,
    radius_m: float = 2000.0,
    *,
    crs: CRS | int | str = 4527,
    lang: str | Lang = "zh",
    tiles: str | None = None,
    attribution: str | None = None,
    max_list: int = 20,
) -> folium.Map:
    """Map for field staff: position, radius ring, cases within, a list with navigation links.

    Parameters
    ----------
    cases : geopandas.GeoDataFrame
        Points in EPSG:4326 with ``code``, ``category``, ``status``, ``deadline``; optional
        ``address`` and ``description``.
    lon, lat : float
        Staff position.
    radius_m : float, default 2000
    crs : pyproj.CRS, int or str, default 4527
    lang : {'zh', 'en'}, default 'zh'
    tiles, attribution : str, optional
    max_list : int, default 20
        Cases listed in the side panel (all are drawn).

    Returns
    -------
    folium.Map
    """
    lg = parse_lang(lang)
    require_columns(cases, "cases", ["code", "category", "status", "deadline", "geometry"])
    near = nearby_cases(cases, lon, lat, radius_m, crs=crs)
    dlat = radius_m / 111_320.0
    dlon = dlat / max(np.cos(np.radians(lat)), 0.01)
    m = new_map((lon - dlon, lat - dlat, lon + dlon, lat + dlat), tiles=tiles, attribution=attribution)
    # Circle takes metres, so the ring is the true radius on the ground.
    folium.Circle([lat, lon], radius=radius_m, color="#3182bd", weight=2, fill=True, fill_opacity=0.06).add_to(m)
    pts = []
    items: list[str] = []
    for _, r in near.iterrows():  # at most a few hundred cases within a walking radius
        st = r["status"] if r["status"] in STATUSES else "other"
        ll = f"{r.geometry.y:.6f},{r.geometry.x:.6f}"
        # RFC 5870 geo: URI; the label is percent-encoded, the whole href escaped below
        geo = f"geo:{ll}?q={ll}({quote(str(r['code']))})"
        rows = [
            (label("category", lg), r["category"]),
            (label("status", lg), label(st, lg)),
            (label("deadline", lg), _fmt_deadline(r["deadline"])),
            (label("distance", lg), f"{r['distance_m']:,.0f} m"),
        ]
        for f in ("address", "description"):
            if f in near.columns and isinstance(r[f], str) and r[f]:
                rows.append((label(f, lg), r[f]))
        link = f'<a href="{esc(geo)}">{esc(label("navigate", lg))}</a>'
        pts.append(
            {
                "lat": r.geometry.y,
                "lon": r.geometry.x,
                "c": STATUS_COLORS[st],
                "r": 7,
                "p": popup_table(rows, title=str(r["code"])) + link,
                "t": esc(r["code"]),
            }
        )
        if len(items) < max_list:
            items.append(
                f"<tr><td>{esc(r['code'])}</td><td>{r['distance_m']:,.0f} m</td>"
                f"<td>{esc(_fmt_deadline(r['deadline']))}</td><td>{link}</td></tr>"
            )
    PointLayer(pts, label("nearby_cases", lg)).add_to(m)
    PointLayer(
        [
            {
                "lat": lat,
                "lon": lon,
                "c": "#08519c",
                "r": 9,
                "stroke": "#ffffff",
                "w": 3,
                "t": esc(label("staff", lg)),
            }
        ],
        label("staff", lg),
        control=False,
    ).add_to(m)
    head = f"<h4>{esc(label('nearby_cases', lg))} ({len(near)}) · {esc(label('radius', lg))} {radius_m:,.0f} m</h4>"
    table = f"<table>{''.join(items)}</table>" if items else f"<div>{esc(label('no_cases', lg))}</div>"
    Control(head + table, position="bottomleft", role="list").add_to(m)
    # the statuses present, and the staff marker, so the colours need no guessing
    present = [s for s in STATUSES if (near["status"].where(near["status"].isin(STATUSES), "other") == s).any()]
    legend(
        label("legend_status", lg),
        [("#08519c", label("staff", lg))] + [(STATUS_COLORS[s], label(s, lg)) for s in present],
        dots=True,
    ).add_to(m)
    return finish(m)
