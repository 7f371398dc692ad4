"""Distribution map: where the leads are and how their disposal stands.

Leads travel as compact columns (see :mod:`maps.payload`) and are turned into clustered markers
in the browser, coloured by disposal status. One overlay per responsible body and one per
category group filter the same cluster (a lead shows when both its body and its group are
checked), so a layer per body costs a checkbox, not a copy of the data. Townships are a count
choropleth, which is also the base layer when no tiles are configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import folium
import geopandas as gpd
import numpy as np
import pandas as pd
from folium.elements import JSCSSMixin
from folium.map import Layer
from folium.template import Template
from folium.utilities import JsCode

from maps.canvas import (
    PageData,
    bounds_of,
    esc,
    finish,
    legend,
    lonlat,
    new_map,
    require_columns,
    to_display_geojson,
)
from maps.payload import dictionary_encode, pack_uint, script_json
from maps.style import SEQUENTIAL, STATUS_COLORS, STATUSES, Lang, label, parse_lang

__all__ = ["LEAD_COLUMNS", "LeadCluster", "count_classes", "render_distribution"]

TEMPLATES = Path(__file__).resolve().parent / "templates"

#: Columns ``render_distribution`` reads from ``leads`` (``address``/text columns optional), plus
#: either ``lon``/``lat`` or a point geometry.
LEAD_COLUMNS = ("code", "category", "category_group", "status", "deadline", "body")

_COORD_STEP = 1e-6  # degrees (about 0.1 m): exact enough for a marker, 3 bytes per coordinate


class LeadCluster(PageData, JSCSSMixin, Layer):
    """Clustered lead markers built in the browser from packed columns."""

    _template = Template((TEMPLATES / "lead_cluster.js").read_text(encoding="utf-8"))

    def __init__(self, payload: dict[str, Any], body_layers: list[str], group_layers: list[str]) -> None:
        super().__init__(name="leads", overlay=True, control=False, show=True)
        self._name = "LeadCluster"
        # Asset names only: maps.assets.localize turns them into our own URLs.
        self.default_js = [("markerclusterjs", "")]
        self.default_css = [("markerclustercss", ""), ("markerclusterdefaultcss", "")]
        self._page_data = {"payload": script_json(payload)}
        self.body_layers = body_layers
        self.group_layers = group_layers


def _split_codes(codes: pd.Series) -> tuple[np.ndarray, list[list[Any]], np.ndarray]:
    """Codes as (prefix index, [prefix, width], number): 'L20261101-9F3A07C2' -> 'L20261101-', 8, 0x9F3A07C2.

    The trailing run of upper-case hexadecimal characters, up to 8 (a decimal tail is a valid hex
    tail too), becomes one 32-bit number; the browser writes it back in upper-case hex padded to
    ``width``. Lead codes are ``L<reported day>-<8 random hex>``, so 100,000 codes share about one
    prefix per day and cost a byte of prefix index plus four bytes each instead of 18 characters
    (with one distinct prefix per lead, the codes alone made the page 2.5 MB bigger). Vectorised
    on the code points of a fixed-width numpy string array.
    """
    arr = codes.to_numpy(dtype=object)
    arr = np.where(pd.isna(arr), "", arr).astype(str)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64), [], np.zeros(0, dtype=np.int64)
    n, chars = arr.size, max(arr.dtype.itemsize // 4, 1)
    cp = arr.view(np.uint32).reshape(n, chars)
    length = (cp != 0).sum(axis=1)
    # Only the last 8 characters can be the tail: work on that window, right-aligned.
    pos = length[:, None] - 8 + np.arange(8)
    last = np.where(pos >= 0, np.take_along_axis(cp, np.clip(pos, 0, chars - 1), axis=1), 0).astype(np.int64)
    decimal = (last >= 48) & (last <= 57)
    upper_hex = (last >= 65) & (last <= 70)
    # width = how many of the window's last characters are hex in a row
    width = np.cumprod((decimal | upper_hex)[:, ::-1], axis=1).sum(axis=1)
    tail = np.arange(8) >= 8 - width[:, None]
    digit = np.where(decimal, last - 48, last - 55)
    number = (np.where(tail, digit, 0) * (16 ** np.arange(7, -1, -1))).sum(axis=1)
    # The prefix is the code without its tail: one slice per distinct (code length - width)
    # group is still per row, so cut the fixed-width array instead and factorise that.
    keep = np.arange(chars) < (length - width)[:, None]
    prefix = np.where(keep, cp, 0).astype(np.uint32).view(f"<U{chars}").ravel()
    pidx, puniq = pd.factorize(prefix, sort=True)
    key = np.asarray(pidx, dtype=np.int64) * 9 + width
    ukeys, idx = np.unique(key, return_inverse=True)
    table = [[str(puniq[k // 9]), int(k % 9)] for k in ukeys]
    return np.asarray(idx, dtype=np.int64).ravel(), table, number


def _deadline_minutes(deadline: pd.Series) -> tuple[np.ndarray, int]:
    """Minutes since the earliest deadline + 1 (0 = no deadline), and that base in UTC ms."""
    ts = pd.to_datetime(deadline, utc=True, errors="coerce")
    if ts.notna().sum() == 0:
        return np.zeros(len(ts), dtype=np.int64), 0
    base = ts.min().floor("min")
    minutes = ((ts - base).dt.total_seconds() // 60).fillna(-1).to_numpy(dtype=np.int64) + 1
    return minutes, int(base.value // 1_000_000)


def lead_payload(leads: pd.DataFrame, *, lang: Lang, text_fields: Sequence[str] = ()) -> dict[str, Any]:
    """The packed columns of ``leads`` for :class:`LeadCluster`."""
    lon, lat = lonlat(leads, "leads")
    lon0, lat0 = (float(lon.min()), float(lat.min())) if len(lon) else (0.0, 0.0)
    # statuses outside STATUSES map to its last entry, 'other'
    st_idx, _ = dictionary_encode(leads["status"], order=STATUSES)
    body_idx, bodies = dictionary_encode(leads["body"])
    grp_idx, groups = dictionary_encode(leads["category_group"])
    cat_idx, cats = dictionary_encode(leads["category"])
    cpre, ctable, cnum = _split_codes(leads["code"])
    dmin, dbase = _deadline_minutes(leads["deadline"])
    texts = []
    for f in text_fields:
        idx, dic = dictionary_encode(leads[f])
        texts.append({"label": label(f, lang), "dict": dic, "col": pack_uint(idx)})
    return {
        "n": len(leads),
        "lat": {"o": lat0, "s": _COORD_STEP, **pack_uint(np.rint((lat - lat0) / _COORD_STEP))},
        "lon": {"o": lon0, "s": _COORD_STEP, **pack_uint(np.rint((lon - lon0) / _COORD_STEP))},
        "status": pack_uint(st_idx),
        "body": pack_uint(body_idx),
        "group": pack_uint(grp_idx),
        "category": pack_uint(cat_idx),
        "code_prefix": pack_uint(cpre),
        "code_number": pack_uint(cnum),
        "code_prefixes": ctable,
        "deadline": pack_uint(dmin),
        "deadline_base": dbase,
        "bodies": bodies,
        "groups": groups,
        "categories": cats,
        "status_labels": [label(s, lang) for s in STATUSES],
        "status_colors": [STATUS_COLORS[s] for s in STATUSES],
        "texts": texts,
        "labels": {k: label(k, lang) for k in ("code", "category", "status", "deadline", "body", "none")},
        "_bodies": bodies,
    }


def count_classes(counts: np.ndarray, k: int = 5) -> np.ndarray:
    """Upper bounds of ``k`` classes of counts (quantiles of the non-zero counts, rounded up).

    Parameters
    ----------
    counts : numpy.ndarray
    k : int, default 5

    Returns
    -------
    numpy.ndarray
        Increasing, unique upper bounds; the last one is the maximum.
    """
    pos = counts[counts > 0]
    if pos.size == 0:
        return np.array([0.0])
    qs = np.ceil(np.quantile(pos, np.linspace(0, 1, k + 1)[1:]))
    return np.unique(qs)


def add_count_choropleth(m: folium.Map, areas: gpd.GeoDataFrame, counts: np.ndarray, *, lang: Lang, title: str) -> None:
    """Township choropleth of counts with hover tooltip and legend."""
    bounds = count_classes(counts)
    cls = np.searchsorted(bounds, counts, side="left")
    colors = np.array(SEQUENTIAL)[np.clip(cls, 0, len(SEQUENTIAL) - 1)]
    colors = np.where(counts == 0, "#ffffff", colors)
    names = areas["name"].map(esc)
    word = esc(label("count", lang))
    tips = [f"<b>{n}</b><br>{word}: {int(c)}" for n, c in zip(names, counts, strict=True)]
    gj = to_display_geojson(areas.assign(tip=tips, fill=colors), ["tip", "fill"])
    folium.GeoJson(
        gj,
        name=esc(title),
        style_function=lambda f: {
            "color": "#666666",
            "weight": 0.8,
            "fillOpacity": 0.7,
            "fillColor": f["properties"]["fill"],
        },
        on_each_feature=JsCode("function (f, layer) { layer.bindTooltip(f.properties.tip, {sticky: true}); }"),
    ).add_to(m)
    lows = np.r_[1, bounds[:-1] + 1]
    items = [("#ffffff", "0")] + [
        (
            SEQUENTIAL[min(i, len(SEQUENTIAL) - 1)],
            f"{int(lo)}–{int(hi)}" if hi > lo else f"{int(hi)}",
        )
        for i, (lo, hi) in enumerate(zip(lows, bounds, strict=False))
    ]
    legend(title, items, position="bottomleft").add_to(m)


def render_distribution(
    leads: pd.DataFrame,
    townships: gpd.GeoDataFrame,
    *,
    lang: str | Lang = "zh",
    tiles: str | None = None,
    attribution: str | None = None,
    text_fields: Sequence[str] = (),
) -> folium.Map:
    """Distribution map: clustered leads by status, a layer per body and category group.

    Parameters
    ----------
    leads : DataFrame or geopandas.GeoDataFrame
        Points as ``lon``/``lat`` columns or an EPSG:4326 point geometry, with columns ``code``,
        ``category``, ``category_group``, ``status``
        (``received``, ``dispatched``, ``signed``, ``in_progress``, ``rectified``, ``verified``,
        ``closed``, ``returned``; anything else shows as *other*), ``deadline`` (datetime,
        naive = UTC, or None) and ``body``. The caller filters by time window, body, category,
        channel and status before calling.
    townships : geopandas.GeoDataFrame
        Polygons with ``code`` and ``name``, and ``count``; without ``count`` it is computed
        from ``leads['township_code']``.
    lang : {'zh', 'en'}, default 'zh'
    tiles, attribution : str, optional
        Base tiles (local server or Tianditu with key); none by default.
    text_fields : sequence of str, default ()
        Extra free-text columns shown in popups (e.g. ``("description", "address")``),
        dictionary-encoded. They cost their full length per distinct value, so leave them out
        for maps of 100,000 leads and link to the lead page instead.

    Returns
    -------
    folium.Map

    Raises
    ------
    MapInputError
        Missing columns, non-point geometries or a CRS other than EPSG:4326.
    """
    lg = parse_lang(lang)
    require_columns(leads, "leads", [*LEAD_COLUMNS, *text_fields])
    require_columns(townships, "townships", ["code", "name", "geometry"])
    lonlat(leads, "leads")  # validated before any work
    if "count" in townships.columns:
        counts = townships["count"].fillna(0).to_numpy(dtype=np.float64)
    else:
        require_columns(leads, "leads (no townships.count)", ["township_code"])
        vc = leads["township_code"].value_counts()
        counts = townships["code"].map(vc).fillna(0).to_numpy(dtype=np.float64)

    m = new_map(bounds_of(townships, leads), tiles=tiles, attribution=attribution)
    add_count_choropleth(m, townships, counts, lang=lg, title=label("township_counts", lg))

    payload = lead_payload(leads, lang=lg, text_fields=text_fields)
    bodies, groups = payload.pop("_bodies"), payload["groups"]
    body_fg = [folium.FeatureGroup(name=esc(f"{label('layer_body', lg)}: {b or label('none', lg)}")) for b in bodies]
    group_fg = [folium.FeatureGroup(name=esc(f"{label('layer_group', lg)}: {label(g or 'other', lg)}")) for g in groups]
    for fg in [*body_fg, *group_fg]:
        fg.add_to(m)
    LeadCluster(payload, [fg.get_name() for fg in body_fg], [fg.get_name() for fg in group_fg]).add_to(m)
    present = set(pd.unique(leads["status"].to_numpy(dtype=object)))
    shown = [s for s in STATUSES if s != "other" or not present <= set(STATUSES[:-1])]
    legend(
        label("legend_status", lg),
        [(STATUS_COLORS[s], label(s, lg)) for s in shown],
        dots=True,
        note=f"{label('leads', lg)}: {len(leads):,}",
    ).add_to(m)
    return finish(m)
