"""Status map: per jurisdiction, how disposal stands — open, overdue, on-time rate, rebounds."""

from __future__ import annotations

import folium
import geopandas as gpd
import numpy as np
import pandas as pd
from folium.utilities import JsCode

from maps.canvas import bounds_of, esc, finish, legend, new_map, require_columns, to_display_geojson
from maps.style import SEQUENTIAL, Lang, label, parse_lang

__all__ = ["STATUS_COLUMNS", "render_status"]

#: Columns of ``areas``: counts of open and overdue leads, leads closed and closed on time
#: (for the rate), rebounds (closed leads reported again at the same place), and optionally
#: ``worst_body`` (the body with most overdue leads in the area).
STATUS_COLUMNS = ("code", "name", "open", "overdue", "closed", "closed_on_time", "rebound")

# Overdue share of open leads: 0-5 % fine ... > 40 % failing.
_OVERDUE_BREAKS = (0.05, 0.1, 0.2, 0.4)


_MAX_LABELLED = 20
_LABEL_CSS = ("font:12px/1.3 sans-serif;text-align:center;color:#222;white-space:nowrap;"
              "text-shadow:0 0 3px #fff,0 0 3px #fff,0 0 3px #fff")


def _add_labels(m: folium.Map, areas: gpd.GeoDataFrame, share: np.ndarray, overdue: np.ndarray,
                worst: set[int], lg: Lang) -> None:
    """Name and overdue figures written on the map: all areas when few, else the worst ones.

    A leader should see which territory lags without hovering over each polygon.
    """
    pts = areas.geometry.representative_point()
    chosen = range(len(areas)) if len(areas) <= _MAX_LABELLED else sorted(worst)
    group = folium.FeatureGroup(name="labels", control=False)
    for i in chosen:
        text = f"{esc(areas['name'].iloc[i])}<br>{esc(label('overdue', lg))} {int(overdue[i])} · {share[i]:.0%}"
        folium.Marker(
            [pts.iloc[i].y, pts.iloc[i].x],
            icon=folium.DivIcon(html=f'<div style="{_LABEL_CSS}">{text}</div>', icon_size=(120, 34),
                                icon_anchor=(60, 17), class_name="leadgrid-label-icon"),
            interactive=False,
        ).add_to(group)
    group.add_to(m)


def render_status(
    areas: gpd.GeoDataFrame,
    *,
    lang: str | Lang = "zh",
    tiles: str | None = None,
    attribution: str | None = None,
) -> folium.Map:
    """Choropleth of the overdue share per county or township, with all figures on hover.

    Parameters
    ----------
    areas : geopandas.GeoDataFrame
        One polygon per jurisdiction (county or township level, as the caller chose) with the
        integer columns of :data:`STATUS_COLUMNS` and optional ``worst_body``.
    lang : {'zh', 'en'}, default 'zh'
    tiles, attribution : str, optional

    Returns
    -------
    folium.Map
        Colour = overdue / open; tooltip = open, overdue, on-time closure rate, rebounds and the
        lagging body; the three worst areas are outlined in black.

    Raises
    ------
    MapInputError
        Missing columns.
    """
    lg = parse_lang(lang)
    require_columns(areas, "areas", STATUS_COLUMNS)
    open_ = areas["open"].fillna(0).to_numpy(dtype=float)
    overdue = areas["overdue"].fillna(0).to_numpy(dtype=float)
    closed = areas["closed"].fillna(0).to_numpy(dtype=float)
    on_time = areas["closed_on_time"].fillna(0).to_numpy(dtype=float)
    share = np.divide(overdue, open_, out=np.zeros_like(open_), where=open_ > 0)
    # 按期办结率 counts open overdue leads in the denominator (DOMAIN.md): closed-on-time /
    # (closed + open-overdue); without them an area could hide its backlog by not closing.
    judged = closed + overdue
    rate = np.divide(on_time, judged, out=np.full_like(closed, np.nan), where=judged > 0)
    cls = np.searchsorted(np.array(_OVERDUE_BREAKS), share, side="left")
    fill = np.array(SEQUENTIAL)[cls]
    worst = set(
        np.argsort(-share, kind="stable")[: min(3, len(share))][
            share[np.argsort(-share, kind="stable")[: min(3, len(share))]] > 0
        ]
    )
    body = areas["worst_body"] if "worst_body" in areas.columns else pd.Series([None] * len(areas))
    tips = []
    for i, (name, b) in enumerate(zip(areas["name"], body, strict=False)):
        r = "—" if np.isnan(rate[i]) else f"{rate[i]:.0%}"
        rows = [
            (label("open", lg), f"{int(open_[i])}"),
            (label("overdue", lg), f"{int(overdue[i])} ({share[i]:.0%})"),
            (label("on_time_rate", lg), r),
            (label("rebound", lg), f"{int(areas['rebound'].iloc[i])}"),
        ]
        if b is not None and not (isinstance(b, float) and np.isnan(b)):
            rows.append((label("worst_body", lg), b))
        body_html = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
        tips.append(f'<div class="leadgrid-tip"><b>{esc(name)}</b><table>{body_html}</table></div>')
    gj = to_display_geojson(
        areas.assign(tip=tips, fill=fill, bad=[i in worst for i in range(len(areas))]),
        ["tip", "fill", "bad"],
    )
    m = new_map(bounds_of(areas), tiles=tiles, attribution=attribution)
    folium.GeoJson(
        gj,
        name=esc(label("status_map", lg)),
        style_function=lambda f: {
            "fillColor": f["properties"]["fill"],
            "fillOpacity": 0.75,
            "color": "#000000" if f["properties"]["bad"] else "#666666",
            "weight": 3 if f["properties"]["bad"] else 0.8,
        },
        on_each_feature=JsCode("function (f, layer) { layer.bindTooltip(f.properties.tip, {sticky: true}); }"),
    ).add_to(m)
    edges = (0, *_OVERDUE_BREAKS)
    items = [
        (SEQUENTIAL[i], f"{lo:.0%}–{hi:.0%}") for i, (lo, hi) in enumerate(zip(edges, _OVERDUE_BREAKS, strict=False))
    ] + [(SEQUENTIAL[-1], f"> {_OVERDUE_BREAKS[-1]:.0%}")]
    _add_labels(m, areas, share, overdue, worst, lg)
    title = label("overdue_share", lg)
    tot_open, tot_over, tot_judged = open_.sum(), overdue.sum(), closed.sum() + overdue.sum()
    tot_rate = f"{on_time.sum() / tot_judged:.0%}" if tot_judged else "—"
    sep = "，" if lg is Lang.ZH else ", "
    rebounds = int(areas["rebound"].sum())
    totals = sep.join([f"{label('open', lg)} {int(tot_open):,}", f"{label('overdue', lg)} {int(tot_over):,}",
                       f"{label('on_time_rate', lg)} {tot_rate}", f"{label('rebound', lg)} {rebounds:,}"])
    outline = "粗黑边：超期率最高的 3 个辖区" if lg is Lang.ZH else "Thick outline: the 3 worst areas"
    legend(title, items, note=f"{label('city_total', lg)}: {totals}. {outline}").add_to(m)
    return finish(m)
