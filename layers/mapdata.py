"""The data behind the maps: scoped, filtered queries returning the frames ``maps/`` renders.

Every query applies the caller's scope (:func:`layers.users.lead_scope_clause`) and the same
:class:`layers.leads.LeadFilter` as ``GET /leads`` inside the SQL, so a map never shows a lead the
list would hide. The maps must stay usable at 100,000 leads, so:

* lead rows select only columns of ``leads`` (no join per row: category and body names are looked
  up once per distinct code), points leave the database as two floats (``ST_X``/``ST_Y``), and
  the driver's plain tuples are transposed with the garbage collector paused;
* the served maps read leaner frames still: :func:`lead_points` (the distribution map: one
  ``category|status|body`` key per row, categoricals, ``lon``/``lat`` floats and no shapely
  objects) and :func:`hotspot_frames` (the hotspot map: coordinates and township codes only, the
  township counts made from those codes); :func:`lead_frame`
  keeps the full GeoDataFrame for everything else;
* per-jurisdiction figures (counts, open, overdue, closed, on time, rebounds) are aggregated by the
  database (one ``GROUP BY`` area and body gives the figures and the lagging body), never by
  pulling the leads into Python;
* polygons of the active boundary version are few (a few hundred) and go through the one WKB
  bridge, :func:`layers.shapes.wkb_array_to_shapes`.

Names follow the map's language: body and category names are the Chinese ``name`` or, for
``lang="en"``, ``name_en`` (falling back to ``name`` when empty).
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    case,
    cast,
    false,
    func,
    inspect,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.orm import Session

from geo import crs as gcrs
from layers import nearby as lead_nearby
from layers.errors import Invalid
from layers.jurisdictions import active_version

# The exact filter GET /leads applies (scope first, then the LeadFilter fields): maps and lists
# must agree on what "the leads matching these filters" means, so the map reuses it rather than
# re-implementing it.
from layers.leads import OPEN_STATES, LeadFilter
from layers.leads import _filtered as _apply_filter
from layers.models import AuditEvent, Body, Category, Jurisdiction, Lead, MonitoringPoint
from layers.shapes import wkb_array_to_shapes
from layers.users import Principal, scope_clause

__all__ = [
    "LEVELS",
    "MAX_TEXT_LEADS",
    "area_frame",
    "hotspot_frames",
    "lead_frame",
    "lead_locations",
    "lead_points",
    "monitoring_frame",
    "nearby_frame",
    "status_frame",
]

#: Jurisdiction levels a status map can be drawn at.
LEVELS = ("county", "township")
#: Above this many leads the distribution map leaves free text (description, address) out of the
#: page: each distinct text costs its full length, and at 100,000 leads that alone is megabytes.
MAX_TEXT_LEADS = 5000
#: Free-text columns a lead frame can carry. Complainant name and phone are never selected.
TEXT_FIELDS = ("description", "address")

_LEAD_COLUMNS = ("code", "category", "category_group", "status", "deadline", "body", "body_code",
                 "county_code", "township_code")


def _check_lang(lang: str) -> str:
    if lang not in ("zh", "en"):
        raise Invalid("lang", lang, "zh or en")
    return lang


def _lead_select(text_fields: Sequence[str]) -> Select[Any]:
    """Lead rows as plain columns of the ``leads`` table only: no join, no name per row.

    Category and body names are looked up afterwards for the few distinct codes
    (:func:`_named`); joining ``categories`` and ``bodies`` for every row and carrying two more
    strings per lead cost more than half the query at 100,000 leads on SpatiaLite.
    """
    unknown = [t for t in text_fields if t not in TEXT_FIELDS]
    if unknown:
        raise Invalid("text_fields", unknown, "a subset of " + ", ".join(TEXT_FIELDS))
    cols: list[Any] = [
        Lead.code,
        Lead.category_code,
        Lead.status,
        # Raw value (SQLite: UTC text, PostGIS: aware datetime), parsed for the whole column in
        # _to_points: the per-row UTCDateTime conversion cost a second at 100,000 leads.
        type_coerce(Lead.due_at, String).label("deadline"),
        Lead.body_code,
        Lead.county_code,
        Lead.township_code,
        *[getattr(Lead, t).label(t) for t in text_fields],
        func.ST_X(Lead.geom).label("lon"),
        func.ST_Y(Lead.geom).label("lat"),
    ]
    return select(*cols).where(Lead.geom.is_not(None))


_RAW_COLUMNS = ("code", "category_code", "status", "deadline", "body_code", "county_code", "township_code")


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while 100,000 row tuples are made and transposed.

    They hold no cycles, but their allocation alone triggers full collections over the whole
    heap: pausing saves about a third of the Python time of a map query. The collector is
    process-wide: another thread's collections are only delayed, never skipped.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _fetch(session: Session, stmt: Select[Any]) -> list[tuple[Any, ...]]:
    """All rows of ``stmt`` as the driver's plain tuples.

    SQLAlchemy still compiles the statement and converts the bound parameters (aware datetimes
    of the filters); only the per-row ``Row`` wrappers are skipped, as every selected column
    needs no result conversion (text and floats; deadlines are parsed per column).
    """
    result = session.connection().execute(stmt)
    try:
        return list(result.cursor.fetchall()) if result.cursor is not None else []
    finally:
        result.close()


def _lookup(values: pd.Series, tables: Sequence[dict[str, Any]]) -> list[np.ndarray]:
    """``table[v]`` for each value and each table, computed once per distinct value (None if absent)."""
    codes, uniques = pd.factorize(values.to_numpy(dtype=object), use_na_sentinel=True)
    return [np.array([t.get(u) for u in uniques] + [None], dtype=object)[codes] for t in tables]


def _named(session: Session, frame: pd.DataFrame, lang: str) -> Any:
    """Add ``category``, ``category_group`` and ``body`` (names in ``lang``) from the codes."""
    en = lang == "en"
    names: dict[str, Any] = {}
    groups: dict[str, Any] = {}
    for code, zh, name_en, group in session.execute(
            select(Category.code, Category.name, Category.name_en, Category.group)).all():
        names[code] = name_en if en and name_en else zh
        groups[code] = group
    bodies = {code: name_en if en and name_en else zh
              for code, zh, name_en in session.execute(select(Body.code, Body.name, Body.name_en)).all()}
    category, category_group = _lookup(frame["category_code"], [names, groups])
    body_code = frame["body_code"].to_numpy(dtype=object)
    (body,) = _lookup(frame["body_code"], [bodies])
    # a body code without a row in ``bodies`` shows as its code (as an outer join would)
    body = np.where(pd.isna(body), body_code, body)
    return frame.assign(category=category, category_group=category_group, body=body)


def _to_frame(rows: Sequence[Any], columns: Sequence[str]) -> gpd.GeoDataFrame:
    """Rows with trailing ``lon``, ``lat`` → GeoDataFrame of EPSG:4326 points, vectorised."""
    names = [*columns, "lon", "lat"]
    # Transposed once in C: pandas probing 100,000 row objects one by one took longer than the
    # query itself.
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    data: dict[str, Any] = {n: np.array(c, dtype=object) for n, c in zip(names[:-2], cols[:-2], strict=True)}
    lon = np.asarray(cols[-2], dtype=float)
    lat = np.asarray(cols[-1], dtype=float)
    if "deadline" in data:
        data["deadline"] = pd.to_datetime(pd.Series(data["deadline"], dtype=object), utc=True, format="ISO8601")
    return gpd.GeoDataFrame(pd.DataFrame(data, columns=list(columns)),
                            geometry=gpd.GeoSeries(shapely.points(lon, lat), crs=4326))


def lead_frame(
    session: Session,
    p: Principal,
    f: LeadFilter,
    *,
    lang: str = "zh",
    text_fields: Sequence[str] = (),
) -> gpd.GeoDataFrame:
    """The located leads ``p`` may see that match ``f``, with the columns the maps read.

    Parameters
    ----------
    session : Session
        Read-only use.
    p : Principal
        The caller; their scope is part of the SQL.
    f : LeadFilter
        Status, body, category, channel, jurisdiction and time-window filters (as ``GET /leads``).
    lang : {'zh', 'en'}, default 'zh'
        Language of body and category names.
    text_fields : sequence of {'description', 'address'}, default ()
        Free-text columns to include (for popups).
    Returns
    -------
    geopandas.GeoDataFrame
        EPSG:4326 points with ``code``, ``category`` (name), ``category_group``, ``status``,
        ``deadline`` (aware UTC or NaT), ``body`` (name), ``body_code``, ``county_code``,
        ``township_code`` and the requested text columns, in lead id order. Leads without a
        location are left out. (The served maps read the leaner :func:`lead_points`.)

    Raises
    ------
    layers.errors.Invalid
        Unknown ``lang`` or text field.
    """
    _check_lang(lang)
    stmt = _apply_filter(_lead_select(text_fields), p, f).order_by(Lead.id)
    with _gc_paused():
        frame = _to_frame(_fetch(session, stmt), [*_RAW_COLUMNS, *text_fields])
    return _named(session, frame, lang)[[*_LEAD_COLUMNS, *text_fields, "geometry"]]


_SEP = "\x1f"  # unit separator: in no code


def _categorical(per_key: Sequence[Any], key_idx: np.ndarray) -> pd.Categorical:
    """A categorical column from one value per distinct key and each row's key index."""
    idx, uniques = pd.factorize(np.array(list(per_key), dtype=object), use_na_sentinel=True)
    return pd.Categorical.from_codes(idx[key_idx], categories=pd.Index(uniques, dtype=object))


def lead_points(
    session: Session,
    p: Principal,
    f: LeadFilter,
    *,
    lang: str = "zh",
    text_fields: Sequence[str] = (),
) -> pd.DataFrame:
    """The lean frame the distribution map reads: one row per located lead, no shapely.

    The same leads, in the same order, as :func:`lead_frame`, built for 100,000 rows: category,
    status and body travel as one ``category|status|body`` key per row (a few hundred distinct
    ones, factorised once and named per key, not per row), coordinates as two floats.

    Parameters
    ----------
    session : Session
    p : Principal
        The caller; their scope is part of the SQL.
    f : LeadFilter
    lang : {'zh', 'en'}, default 'zh'
    text_fields : sequence of {'description', 'address'}, default ()

    Returns
    -------
    pandas.DataFrame
        ``code``, ``category``, ``category_group``, ``status`` and ``body`` (names; pandas
        categoricals), ``deadline`` (aware UTC or NaT), the text columns, and float ``lon``,
        ``lat`` (EPSG:4326).

    Raises
    ------
    layers.errors.Invalid
        Unknown ``lang`` or text field.
    """
    _check_lang(lang)
    unknown = [t for t in text_fields if t not in TEXT_FIELDS]
    if unknown:
        raise Invalid("text_fields", unknown, "a subset of " + ", ".join(TEXT_FIELDS))
    key = (Lead.category_code + _SEP + Lead.status + _SEP + func.coalesce(Lead.body_code, "")).label("key")
    stmt = _apply_filter(
        select(Lead.code, key, type_coerce(Lead.due_at, String).label("deadline"),
               *[getattr(Lead, t).label(t) for t in text_fields],
               func.ST_X(Lead.geom).label("lon"), func.ST_Y(Lead.geom).label("lat"))
        .where(Lead.geom.is_not(None)),
        p, f,
    ).order_by(Lead.id)
    names = ["code", "key", "deadline", *text_fields, "lon", "lat"]
    with _gc_paused():
        rows = _fetch(session, stmt)
        cols = list(zip(*rows, strict=True)) if rows else [() for _ in names]
        del rows
    key_idx, keys = pd.factorize(np.array(cols[1], dtype=object))
    parts = [str(k).split(_SEP) for k in keys]
    en = lang == "en"
    cats = {c: (ne if en and ne else zh, g) for c, zh, ne, g in session.execute(
        select(Category.code, Category.name, Category.name_en, Category.group)).all()}
    bodies = {c: ne if en and ne else zh
              for c, zh, ne in session.execute(select(Body.code, Body.name, Body.name_en)).all()}
    key_idx = np.asarray(key_idx, dtype=np.int64)
    out = pd.DataFrame({
        "code": np.array(cols[0], dtype=object),
        "category": _categorical([cats.get(c, (c, None))[0] for c, _, _ in parts], key_idx),
        "category_group": _categorical([cats.get(c, (c, None))[1] for c, _, _ in parts], key_idx),
        "status": _categorical([st for _, st, _ in parts], key_idx),
        "deadline": pd.to_datetime(pd.Series(cols[2], dtype=object), utc=True, format="ISO8601"),
        # a body code without a row in ``bodies`` shows as its code
        "body": _categorical([bodies.get(b, b) if b else None for _, _, b in parts], key_idx),
    })
    for i, t in enumerate(text_fields):
        out[t] = np.array(cols[3 + i], dtype=object)
    out["lon"] = np.asarray(cols[-2], dtype=float)
    out["lat"] = np.asarray(cols[-1], dtype=float)
    return out


def lead_locations(session: Session, p: Principal, f: LeadFilter) -> pd.DataFrame:
    """Only the ``lon``, ``lat`` (EPSG:4326 floats) of the located leads ``p`` may see matching ``f``.

    What the hotspot map needs: two numbers per lead, in the order of :func:`lead_frame`.

    Parameters
    ----------
    session : Session
    p : Principal
    f : LeadFilter

    Returns
    -------
    pandas.DataFrame
        Float columns ``lon`` and ``lat``.
    """
    stmt = _apply_filter(select(func.ST_X(Lead.geom), func.ST_Y(Lead.geom)).where(Lead.geom.is_not(None)), p, f)
    with _gc_paused():
        rows = _fetch(session, stmt.order_by(Lead.id))
        xy = np.array(rows, dtype=float).reshape(len(rows), 2)
    return pd.DataFrame({"lon": xy[:, 0], "lat": xy[:, 1]})


def hotspot_frames(session: Session, p: Principal, f: LeadFilter) -> tuple[pd.DataFrame, gpd.GeoDataFrame]:
    """What the hotspot map reads: the lead locations, and the townships with their lead counts.

    One scan of the leads gives both: each located lead's ``lon``, ``lat`` and the township code
    it was assigned at intake, so the township Gi* needs no point-in-polygon of 100,000 points.
    (A separate ``GROUP BY township_code`` restricted to located leads reads every row's geometry
    again on SpatiaLite: a quarter of a second at 100,000 leads, against a few hundredths for
    counting the codes already fetched.)

    Parameters
    ----------
    session : Session
    p : Principal
        The caller; their scope is part of the SQL (leads and townships, as :func:`area_frame`).
    f : LeadFilter

    Returns
    -------
    leads : pandas.DataFrame
        Float ``lon``, ``lat`` (EPSG:4326), the rows of :func:`lead_locations`.
    townships : geopandas.GeoDataFrame
        The townships of :func:`area_frame` with ``count`` the number of those located leads
        whose township code is the township's (leads without a location are not counted).
    """
    stmt = _apply_filter(
        select(func.ST_X(Lead.geom), func.ST_Y(Lead.geom), Lead.township_code).where(Lead.geom.is_not(None)), p, f
    )
    with _gc_paused():
        rows = _fetch(session, stmt.order_by(Lead.id))
        cols = list(zip(*rows, strict=True)) if rows else [(), (), ()]
        del rows
    leads = pd.DataFrame({"lon": np.asarray(cols[0], dtype=float), "lat": np.asarray(cols[1], dtype=float)})
    per_code = pd.Series(np.array(cols[2], dtype=object)).value_counts()
    towns = _area_shapes(session, p, "township")
    towns["count"] = towns["code"].map(per_code).fillna(0).astype(int)
    return leads, towns


def count_leads(session: Session, p: Principal, f: LeadFilter) -> int:
    """How many located leads ``p`` may see match ``f`` (to decide on popup text)."""
    stmt = _apply_filter(select(func.count(Lead.id)).where(Lead.geom.is_not(None)), p, f)
    return int(session.scalar(stmt) or 0)


# ------------------------------------------------------------------------------------ areas


def _visible_codes(session: Session, version_id: int, p: Principal, level: str) -> set[str] | None:
    """Codes of ``level`` areas within ``p``'s jurisdiction scope (``None``: all of them).

    An area is visible when it, or one of its ancestors, is in the scope. A user scoped to a
    township asking for counties gets the county that holds their township (its figures are
    still only their own leads, since the lead queries are scoped).
    """
    if not p.scope_codes:
        return None
    rows = session.execute(
        select(Jurisdiction.code, Jurisdiction.parent_code, Jurisdiction.level)
        .where(Jurisdiction.version_id == version_id)
    ).all()
    parent = {r.code: r.parent_code for r in rows}

    def ancestors(code: str) -> list[str]:
        out, seen = [code], {code}
        while (up := parent.get(out[-1])) and up not in seen:
            out.append(up)
            seen.add(up)
        return out

    of_level = [r.code for r in rows if r.level == level]
    inside = {c for c in of_level if p.scope_codes.intersection(ancestors(c))}
    if inside:
        return inside
    holders = {a for s in p.scope_codes if s in parent for a in ancestors(s)}
    return {c for c in of_level if c in holders}


def area_frame(
    session: Session,
    p: Principal,
    f: LeadFilter,
    *,
    level: str = "township",
) -> gpd.GeoDataFrame:
    """Areas of one level of the active boundary version with the count of matching leads.

    Parameters
    ----------
    session : Session
    p : Principal
        Scope: areas outside a jurisdiction-scoped user's territory are left out, and counts
        include only leads the user may see.
    f : LeadFilter
    level : {'county', 'township'}, default 'township'

    Returns
    -------
    geopandas.GeoDataFrame
        EPSG:4326 polygons with ``code``, ``name``, ``parent_code`` and ``count`` (integer),
        ordered by code; empty when no boundary version is active.

    Raises
    ------
    layers.errors.Invalid
        Unknown ``level``.
    """
    out = _area_shapes(session, p, level)
    col = _level_column(level)
    counts: dict[str, int] = dict(session.execute(
        _apply_filter(select(col, func.count(Lead.id)).where(col.is_not(None)), p, f).group_by(col)
    ).all())
    out["count"] = out["code"].map(counts).fillna(0).astype(int)
    return out


def _area_shapes(session: Session, p: Principal, level: str) -> gpd.GeoDataFrame:
    """Polygons of ``level`` in the active version that ``p`` may see: code, name, parent_code."""
    if level not in LEVELS:
        raise Invalid("level", level, " or ".join(LEVELS))
    version = active_version(session)
    if version is None:
        return gpd.GeoDataFrame({"code": [], "name": [], "parent_code": []}, geometry=gpd.GeoSeries([], crs=4326))
    stmt = select(Jurisdiction.code, Jurisdiction.name, Jurisdiction.parent_code, Jurisdiction.geom).where(
        Jurisdiction.version_id == version.id, Jurisdiction.level == level
    )
    codes = _visible_codes(session, version.id, p, level)
    if codes is not None:
        stmt = stmt.where(Jurisdiction.code.in_(sorted(codes)) if codes else false())
    rows = session.execute(stmt.order_by(Jurisdiction.code)).all()
    geoms = wkb_array_to_shapes([r.geom for r in rows]) if rows else np.array([], dtype=object)
    return gpd.GeoDataFrame(
        {"code": [r.code for r in rows], "name": [r.name for r in rows],
         "parent_code": [r.parent_code for r in rows]},
        geometry=gpd.GeoSeries(geoms, crs=4326),
    )


def _level_column(level: str) -> Any:
    return Lead.county_code if level == "county" else Lead.township_code


def _rebound_counts(session: Session, p: Principal, f: LeadFilter, col: Any) -> dict[str, int]:
    """Reopenings per area: audit events whose action ends in ``reopen`` (0 before any exist).

    The workflow records a rebound (重新打开) as a ``reopen`` event on the lead; the suffix match
    accepts ``lead.reopen`` and ``reopen`` but not ``reopen_redispatch``, which follows a reopen
    and would count it twice.
    """
    # Reopen events counted per lead first, then joined to the leads: probing the audit index
    # once per lead (the other way round) cost four times as much at 100,000 leads.
    reopens = (
        select(AuditEvent.entity_id.label("lead_ref"), func.count(AuditEvent.id).label("k"))
        .where(AuditEvent.entity == "lead", AuditEvent.action.like("%reopen"))
        .group_by(AuditEvent.entity_id)
        .subquery()
    )
    stmt = select(col, func.sum(reopens.c.k)).select_from(Lead).join(
        reopens, reopens.c.lead_ref == cast(Lead.id, String)
    ).where(col.is_not(None))
    return {str(k): int(v) for k, v in session.execute(_apply_filter(stmt, p, f).group_by(col)).all()}


def status_frame(
    session: Session,
    p: Principal,
    f: LeadFilter,
    *,
    level: str = "county",
    now: datetime,
    lang: str = "zh",
) -> gpd.GeoDataFrame:
    """Per county or township: open, overdue, closed, closed on time, rebounds, lagging body.

    Parameters
    ----------
    session : Session
    p : Principal
        Scope, inside every aggregate.
    f : LeadFilter
        Filters (a time window selects leads by ``reported_at``).
    level : {'county', 'township'}, default 'county'
    now : datetime
        Aware; a lead is overdue when it is open and ``due_at < now``.
    lang : {'zh', 'en'}, default 'zh'
        Language of the lagging body's name.

    Returns
    -------
    geopandas.GeoDataFrame
        :func:`area_frame` plus integer columns ``open`` (any state but closed and merged),
        ``overdue``, ``closed``, ``closed_on_time`` (closed with ``closed_at <= due_at``, or with
        no deadline), ``rebound`` (reopen events) and ``worst_body`` (the body with most overdue
        leads in the area, or None).

    Raises
    ------
    layers.errors.Invalid
        Unknown level or language, or a naive ``now``.
    """
    _check_lang(lang)
    if now.tzinfo is None:
        raise Invalid("now", now.isoformat(), "an aware datetime")
    areas = _area_shapes(session, p, level)
    col = _level_column(level)
    is_open = Lead.status.in_(list(OPEN_STATES))
    is_overdue = and_(is_open, Lead.due_at.is_not(None), Lead.due_at < now)
    is_closed = Lead.status == "closed"
    on_time = and_(is_closed, or_(Lead.due_at.is_(None),
                                  and_(Lead.closed_at.is_not(None), Lead.closed_at <= Lead.due_at)))

    def n(cond: ColumnElement[bool]) -> Any:
        return func.sum(case((cond, 1), else_=0))

    # One pass over the leads, per area *and body*: the area figures are sums over its bodies and
    # the lagging body is the one with most overdue leads (three scans of 100,000 leads before).
    figures = ["count", "open", "overdue", "closed", "closed_on_time"]
    stmt = select(col.label("code"), Lead.body_code, func.count(Lead.id), n(is_open), n(is_overdue),
                  n(is_closed), n(on_time)).where(col.is_not(None))
    by_body = pd.DataFrame.from_records(
        session.execute(_apply_filter(stmt, p, f).group_by(col, Lead.body_code)).all(),
        columns=["code", "body_code", *figures],
    )
    by_body[figures] = by_body[figures].astype("int64")
    out = areas.join(by_body.groupby("code")[figures].sum(), on="code")
    for c in figures:
        out[c] = out[c].fillna(0).astype(int)
    out["rebound"] = out["code"].map(_rebound_counts(session, p, f, col)).fillna(0).astype(int)
    names = {code: (en if lang == "en" and en else zh)
             for code, zh, en in session.execute(select(Body.code, Body.name, Body.name_en)).all()}
    lag = by_body[by_body["body_code"].notna() & (by_body["overdue"] > 0)]
    lag = lag.assign(body=[names.get(b) or b for b in lag["body_code"]])
    # Most overdue leads first; ties go to the alphabetically first body, so the map is stable.
    lag = lag.groupby(["code", "body"], as_index=False)["overdue"].sum()
    lag = lag.sort_values(["code", "overdue", "body"], ascending=[True, False, True], kind="stable")
    out["worst_body"] = out["code"].map(lag.drop_duplicates("code").set_index("code")["body"])
    return out


# ----------------------------------------------------------------------------------- nearby


def nearby_frame(
    session: Session,
    p: Principal,
    f: LeadFilter,
    lon: float,
    lat: float,
    *,
    datum: str = "wgs84",
    radius_m: float = 2000.0,
    lang: str = "zh",
    limit: int = 500,
) -> tuple[gpd.GeoDataFrame, float, float]:
    """Leads within ``radius_m`` metres (geodesic) of a position, nearest first.

    Candidates come through the spatial index (:func:`layers.nearby.within_stmt`); the same
    filters and scope as the other maps apply; distances are WGS84 geodesic metres.

    Parameters
    ----------
    session : Session
    p : Principal
    f : LeadFilter
    lon, lat : float
        The staff member's position in ``datum`` (GCJ-02 from phone maps is converted first).
    datum : str, default 'wgs84'
        ``wgs84``, ``cgcs2000``, ``gcj02`` or ``bd09``.
    radius_m : float, default 2000
        In (0, 50 000].
    lang : {'zh', 'en'}, default 'zh'
    limit : int, default 500
        At most this many leads, nearest first.

    Returns
    -------
    cases : geopandas.GeoDataFrame
        :func:`lead_frame` columns plus ``address`` and ``distance_m``, sorted by distance then
        deadline.
    lon, lat : float
        The position in storage lon/lat.

    Raises
    ------
    layers.errors.Invalid
        Bad coordinates, datum, radius or language (the message names the field).
    """
    _check_lang(lang)
    try:
        gcrs.validate_lonlat(float(lon), float(lat))
    except (TypeError, ValueError):
        raise Invalid("lon/lat", (lon, lat), "finite numbers, lon in ±180 and lat in ±90") from None
    try:
        d = gcrs.parse_datum(datum)
    except gcrs.DatumError:
        raise Invalid("datum", datum, "one of " + ", ".join(x.value for x in gcrs.Datum)) from None
    if not (0 < radius_m <= lead_nearby.MAX_RADIUS_M):
        raise Invalid("radius_m", radius_m, f"metres in (0, {lead_nearby.MAX_RADIUS_M:g}]")
    x, y = (float(v) for v in gcrs.to_storage(float(lon), float(lat), d))
    backend = "postgis" if session.get_bind().dialect.name == "postgresql" else "spatialite"
    candidates = lead_nearby.within_stmt(backend, p, x, y, radius_m).with_only_columns(Lead.id)
    stmt = _apply_filter(_lead_select(("address",)), p, f).where(Lead.id.in_(candidates))
    cases = _named(session, _to_frame(_fetch(session, stmt), [*_RAW_COLUMNS, "address"]), lang)
    cases = cases[[*_LEAD_COLUMNS, "address", "geometry"]]
    dist = np.atleast_1d(gcrs.geodesic_distance_m(x, y, cases.geometry.x.to_numpy(), cases.geometry.y.to_numpy()))
    cases = cases.assign(distance_m=dist if len(cases) else np.zeros(0))
    cases = cases[cases["distance_m"] <= radius_m]
    cases = cases.assign(_dl=pd.to_datetime(cases["deadline"], utc=True))
    cases = cases.sort_values(["distance_m", "_dl"], na_position="last", kind="stable").drop(columns="_dl")
    return cases.head(limit).reset_index(drop=True), x, y


# ------------------------------------------------------------------------------- monitoring


def _monitoring_tables(session: Session) -> Any:
    """``layers.monitoring_store`` when its tables exist in this database, else ``None``.

    The readings layer lands separately (migration 0003); without it every active point shows
    as *data missing* (nothing received) rather than the map failing.
    """
    try:
        store = importlib.import_module("layers.monitoring_store")
    except ImportError:
        return None
    insp = inspect(session.get_bind())
    needed = (store.MonitoringLink.__tablename__, store.MonitoringEpisode.__tablename__)
    return store if all(insp.has_table(t) for t in needed) else None


def monitoring_frame(session: Session, p: Principal) -> gpd.GeoDataFrame:
    """Monitoring points ``p`` may see with their latest status.

    The status of an active point is *exceeding* while an exceedance episode is open,
    *data missing* while a data-missing episode is open or when nothing was ever received, and
    *normal* otherwise; an inactive point is *offline*.

    Parameters
    ----------
    session : Session
    p : Principal
        Scope by the point's jurisdiction codes and body, as for leads.

    Returns
    -------
    geopandas.GeoDataFrame
        EPSG:4326 points with ``code`` (MN), ``name``, ``enterprise``, ``kind``, ``status``
        (``normal``, ``exceeding``, ``missing`` or ``offline``), ``latest`` (the open
        exceedance as text, or None) and ``time`` (DataTime of the last upload, or None).
    """
    if not inspect(session.get_bind()).has_table(MonitoringPoint.__tablename__):
        rows: list[Any] = []
    else:
        rows = list(session.execute(
            select(MonitoringPoint.mn, MonitoringPoint.name, MonitoringPoint.enterprise, MonitoringPoint.kind,
                   MonitoringPoint.active, func.ST_X(MonitoringPoint.geom), func.ST_Y(MonitoringPoint.geom))
            .where(scope_clause(p, MonitoringPoint)).order_by(MonitoringPoint.mn)
        ).all())
    pts = _to_frame(rows, ["code", "name", "enterprise", "kind", "active"])
    active = pts["active"].astype(bool).to_numpy()
    status = np.where(active, "missing", "offline").astype(object)
    latest: list[str | None] = [None] * len(pts)
    time = pd.Series([pd.NaT] * len(pts), dtype="datetime64[ns, UTC]")
    store = _monitoring_tables(session) if len(pts) else None
    if store is not None:
        mns = sorted(pts["code"])
        link = store.MonitoringLink
        heard: dict[str, Any] = dict(
            session.execute(select(link.mn, link.last_data_time).where(link.mn.in_(mns))).all()
        )
        ep = store.MonitoringEpisode
        episodes = session.execute(
            select(ep.mn, ep.kind, ep.pollutant, ep.max_value, ep.limit_value, ep.unit)
            .where(ep.mn.in_(mns), ep.status == "open").order_by(ep.id)
        ).all()
        code = pts["code"].to_numpy()
        time = pd.Series(pd.to_datetime(pts["code"].map(heard), utc=True), index=pts.index)
        status = np.where(active & pts["code"].isin(list(heard)).to_numpy(), "normal", status).astype(object)
        where = {c: i for i, c in enumerate(code)}
        for mn, kind, pollutant, top, limit, unit in episodes:
            i = where[mn]
            if not active[i]:
                continue
            if kind == "exceedance":
                status[i] = "exceeding"
                over = top is not None and limit is not None
                latest[i] = f"{pollutant} {top:g} {unit} (> {limit:g})" if over else pollutant
            elif status[i] != "exceeding":
                status[i] = "missing"
    return pts.drop(columns="active").assign(status=status, latest=latest, time=time)
