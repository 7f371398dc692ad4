"""The data behind the maps: scoped, filtered queries returning the frames ``maps/`` renders.

Every query applies the caller's scope (:func:`layers.users.lead_scope_clause`) and the same
:class:`layers.leads.LeadFilter` as ``GET /leads`` inside the SQL, so a map never shows a lead the
list would hide. The maps must stay usable at 100,000 leads, so:

* lead rows select only the columns a renderer reads, and points leave the database as two floats
  (``ST_X``/``ST_Y``), built into a GeoSeries with one vectorised :func:`shapely.points` call
  instead of decoding 100,000 WKB values;
* per-jurisdiction figures (counts, open, overdue, closed, on time, rebounds) are aggregated by the
  database (``GROUP BY township_code``/``county_code``), never by pulling the leads into Python;
* polygons of the active boundary version are few (a few hundred) and go through the one WKB
  bridge, :func:`layers.shapes.wkb_array_to_shapes`.

Names follow the map's language: body and category names are the Chinese ``name`` or, for
``lang="en"``, ``name_en`` (falling back to ``name`` when empty).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
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
    "lead_frame",
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


def _name(col_zh: Any, col_en: Any, lang: str) -> Any:
    """The display name column for ``lang`` (English falls back to Chinese when empty)."""
    if lang == "en":
        return func.coalesce(func.nullif(col_en, ""), col_zh)
    return col_zh


def _check_lang(lang: str) -> str:
    if lang not in ("zh", "en"):
        raise Invalid("lang", lang, "zh or en")
    return lang


def _lead_select(lang: str, text_fields: Sequence[str]) -> Select[Any]:
    unknown = [t for t in text_fields if t not in TEXT_FIELDS]
    if unknown:
        raise Invalid("text_fields", unknown, "a subset of " + ", ".join(TEXT_FIELDS))
    cols: list[Any] = [
        Lead.code,
        _name(Category.name, Category.name_en, lang).label("category"),
        Category.group.label("category_group"),
        Lead.status,
        # Raw value (SQLite: UTC text, PostGIS: aware datetime), parsed for the whole column in
        # _to_points: the per-row UTCDateTime conversion cost a second at 100,000 leads.
        type_coerce(Lead.due_at, String).label("deadline"),
        func.coalesce(_name(Body.name, Body.name_en, lang), Lead.body_code).label("body"),
        Lead.body_code,
        Lead.county_code,
        Lead.township_code,
        *[getattr(Lead, t).label(t) for t in text_fields],
        func.ST_X(Lead.geom).label("lon"),
        func.ST_Y(Lead.geom).label("lat"),
    ]
    return (
        select(*cols)
        .join(Category, Category.code == Lead.category_code)
        .outerjoin(Body, Body.code == Lead.body_code)
        .where(Lead.geom.is_not(None))
    )


def _to_points(rows: Sequence[Any], columns: Sequence[str]) -> gpd.GeoDataFrame:
    """Rows with trailing ``lon``, ``lat`` → GeoDataFrame of points, vectorised."""
    names = [*columns, "lon", "lat"]
    # Transposed once in C: pandas probing 100,000 SQLAlchemy Row objects one by one took longer
    # than the query itself.
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    data = {n: list(c) for n, c in zip(names[:-2], cols[:-2], strict=True)}
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
        ``deadline`` (aware UTC or None), ``body`` (name), ``body_code``, ``county_code``,
        ``township_code`` and the requested text columns. Leads without a location are left out.

    Raises
    ------
    layers.errors.Invalid
        Unknown ``lang`` or text field.
    """
    _check_lang(lang)
    stmt = _apply_filter(_lead_select(lang, text_fields), p, f).order_by(Lead.id)
    # Core execution: rows need no ORM identity handling (another second at 100,000 leads).
    rows = session.connection().execute(stmt).all()
    return _to_points(rows, [*_LEAD_COLUMNS, *text_fields])


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
    if level not in LEVELS:
        raise Invalid("level", level, " or ".join(LEVELS))
    version = active_version(session)
    if version is None:
        return gpd.GeoDataFrame({"code": [], "name": [], "parent_code": [], "count": []},
                                geometry=gpd.GeoSeries([], crs=4326))
    stmt = select(Jurisdiction.code, Jurisdiction.name, Jurisdiction.parent_code, Jurisdiction.geom).where(
        Jurisdiction.version_id == version.id, Jurisdiction.level == level
    )
    codes = _visible_codes(session, version.id, p, level)
    if codes is not None:
        stmt = stmt.where(Jurisdiction.code.in_(sorted(codes)) if codes else false())
    rows = session.execute(stmt.order_by(Jurisdiction.code)).all()
    geoms = wkb_array_to_shapes([r.geom for r in rows]) if rows else np.array([], dtype=object)
    out = gpd.GeoDataFrame(
        {"code": [r.code for r in rows], "name": [r.name for r in rows],
         "parent_code": [r.parent_code for r in rows]},
        geometry=gpd.GeoSeries(geoms, crs=4326),
    )
    col = _level_column(level)
    counts: dict[str, int] = dict(session.execute(
        _apply_filter(select(col, func.count(Lead.id)).where(col.is_not(None)), p, f).group_by(col)
    ).all())
    out["count"] = out["code"].map(counts).fillna(0).astype(int)
    return out


def _level_column(level: str) -> Any:
    return Lead.county_code if level == "county" else Lead.township_code


def _rebound_counts(session: Session, p: Principal, f: LeadFilter, col: Any) -> dict[str, int]:
    """Reopenings per area: audit events whose action ends in ``reopen`` (0 before any exist).

    The workflow records a rebound (重新打开) as a ``reopen`` event on the lead; the suffix match
    accepts ``lead.reopen`` and ``reopen`` but not ``reopen_redispatch``, which follows a reopen
    and would count it twice.
    """
    stmt = select(col, func.count(AuditEvent.id)).select_from(Lead).join(
        AuditEvent,
        and_(AuditEvent.entity == "lead", AuditEvent.entity_id == cast(Lead.id, String),
             AuditEvent.action.like("%reopen")),
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
    areas = area_frame(session, p, f, level=level)
    col = _level_column(level)
    is_open = Lead.status.in_(list(OPEN_STATES))
    is_overdue = and_(is_open, Lead.due_at.is_not(None), Lead.due_at < now)
    is_closed = Lead.status == "closed"
    on_time = and_(is_closed, or_(Lead.due_at.is_(None),
                                  and_(Lead.closed_at.is_not(None), Lead.closed_at <= Lead.due_at)))

    def n(cond: ColumnElement[bool]) -> Any:
        return func.sum(case((cond, 1), else_=0))

    stmt = select(col.label("code"), n(is_open).label("open"), n(is_overdue).label("overdue"),
                  n(is_closed).label("closed"), n(on_time).label("closed_on_time")).where(col.is_not(None))
    figures = pd.DataFrame.from_records(
        session.execute(_apply_filter(stmt, p, f).group_by(col)).all(),
        columns=["code", "open", "overdue", "closed", "closed_on_time"],
    ).set_index("code")
    out = areas.join(figures, on="code")
    for c in ("open", "overdue", "closed", "closed_on_time"):
        out[c] = out[c].fillna(0).astype(int)
    out["rebound"] = out["code"].map(_rebound_counts(session, p, f, col)).fillna(0).astype(int)
    body = func.coalesce(_name(Body.name, Body.name_en, lang), Lead.body_code)
    lag = session.execute(
        _apply_filter(
            select(col, body, func.count(Lead.id)).outerjoin(Body, Body.code == Lead.body_code)
            .where(col.is_not(None), Lead.body_code.is_not(None), is_overdue),
            p, f,
        ).group_by(col, body)
    ).all()
    worst: dict[str, tuple[int, str]] = {}
    for code, name, k in lag:
        # most overdue leads first; ties go to the alphabetically first body, so the map is stable
        if code not in worst or (-k, name) < (-worst[code][0], worst[code][1]):
            worst[code] = (int(k), str(name))
    out["worst_body"] = out["code"].map({c: v[1] for c, v in worst.items()})
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
    stmt = _apply_filter(_lead_select(lang, ("address",)), p, f).where(Lead.id.in_(candidates))
    cases = _to_points(session.connection().execute(stmt).all(), [*_LEAD_COLUMNS, "address"])
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
    pts = _to_points(rows, ["code", "name", "enterprise", "kind", "active"])
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
