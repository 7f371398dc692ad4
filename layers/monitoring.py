"""Online monitoring: points, ingest of HJ 212 packets, exceedance and data-missing leads,
and the pollution index ranking.

Points are imported from CSV/Excel and located like leads (datum → storage lon/lat, the active
boundary version, the routing rule for category ``exceedance``). Packets from the receiver
(``api.hj212_server``) reach :class:`DbSink`, which batches them and writes each batch in one
unit of work from a worker thread (:func:`store_batch`): readings idempotently on
(MN, CN, DataTime, pollutant), the link state with the device clock skew, quarantine for
unknown MNs, then the exceedance engine (:mod:`layers.exceedance`) on the readings that are
new. Each episode raises exactly one lead through :func:`layers.leads.submit`, so it is
assigned and routed like any other lead; updates and the close are audited.

Pollution index (:func:`ranking`), per jurisdiction *j* of the chosen level, over a window
of ``days`` ending at ``now``::

    E_j = Σ_episodes  hours_in_window × min(max_value / limit, 5)   (exceedance episodes of
                                                                   the points in j)
    A_j = E_j / max(1, points_j)                 weighted exceedance-hours per point
    B_j = open_leads_j / area_km2_j × 10,000     open leads (any channel) per 10,000 km²
    index_j = 100 × (0.6 × A_j / max_k A_k  +  0.4 × B_j / max_k B_k)

A term whose maximum is 0 contributes 0, so the index lies in [0, 100] and the worst
jurisdiction on both terms scores 100. ``hours_in_window`` is the overlap of
[started_at, ended_at or now] with the window. The severity weight caps at 5 so one broken
analyser cannot dominate the city. Dividing by points keeps an area with many monitors from
ranking worse merely for being watched more closely; dividing leads by area compares a small
urban district fairly with a large rural county.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
from sqlalchemy import ColumnElement, Table, Text, and_, func, insert, or_, select, update
from sqlalchemy import cast as sql_cast
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Session, sessionmaker

from geo import crs as gcrs
from geo.assign import BoundaryIndex
from geo.assign import assign as assign_points
from layers import audit, leads
from layers.db import unit_of_work
from layers.errors import Invalid, NotFound
from layers.exceedance import EpisodeEvent, EventKind, Rule, RunState, Sample, evaluate, parse_limits
from layers.hj212 import Packet
from layers.lead_import import ImportSummary, RowError, read_table
from layers.models import AssignMethod, Jurisdiction, Lead, MonitoringPoint
from layers.monitoring_store import (
    ExceedanceRun,
    MonitoringEpisode,
    MonitoringLink,
    MonitoringQuarantine,
    MonitoringReading,
)
from layers.routing import Router
from layers.shapes import point_ewkt, to_shape
from layers.users import Principal, scope_clause

log = logging.getLogger(__name__)

# Core tables for the hot path (typed as Table: ``__table__`` is only known as a FromClause).
_READINGS = cast(Table, MonitoringReading.__table__)
_QUARANTINE = cast(Table, MonitoringQuarantine.__table__)
_LINKS = cast(Table, MonitoringLink.__table__)
_RUNS = cast(Table, ExceedanceRun.__table__)

KINDS = ("outlet", "dust", "air_station")
POINT_TARGETS = ("mn", "name", "enterprise", "kind", "lon", "lat", "datum", "limits", "active")
RULE_KEYS = ("limit", "unit", "period", "consecutive", "field")
EXCEEDANCE = "exceedance"
DATA_MISSING = "data_missing"
ACTOR = "monitoring"
LEAD_OPEN_STATES = leads.OPEN_STATES


# =============================================================================== points


@dataclass(frozen=True)
class PointIn:
    """A validated monitoring point."""

    mn: str
    name: str
    lon: float
    lat: float
    datum: str = "wgs84"
    enterprise: str = ""
    kind: str = "outlet"
    limits: Mapping[str, Rule] = field(default_factory=dict)
    active: bool = True


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _number(name: str, v: Any) -> float:
    if _blank(v):
        raise Invalid(name, v, "a decimal number")
    try:
        out = float(v)
    except (TypeError, ValueError):
        raise Invalid(name, v, "a decimal number") from None
    if not math.isfinite(out):
        raise Invalid(name, v, "a finite number")
    return out


def _limits_of(raw: Mapping[str, Any]) -> dict[str, Rule]:
    """Limits from a JSON ``limits`` column and/or ``<code>.limit``-style columns."""
    spec: dict[str, dict[str, Any]] = {}
    text = raw.get("limits")
    if not _blank(text):
        if isinstance(text, Mapping):
            parsed: Any = text
        else:
            try:
                parsed = json.loads(str(text))
            except json.JSONDecodeError as exc:
                raise Invalid("limits", text, f"JSON such as {{\"a34001\": {{\"limit\": 80}}}} ({exc.msg})") from None
        if not isinstance(parsed, Mapping):
            raise Invalid("limits", text, "a JSON object: pollutant code → {limit, unit, period, consecutive}")
        for code, rule in parsed.items():
            spec[str(code)] = dict(rule) if isinstance(rule, Mapping) else {"limit": rule}
    for key, value in raw.items():
        code, dot, part = str(key).rpartition(".")
        if dot and code and part in RULE_KEYS and not _blank(value):
            spec.setdefault(code.strip(), {})[part] = value.strip() if isinstance(value, str) else value
    return parse_limits(spec)


def validate_point(raw: Mapping[str, Any], *, datum: str | None = None) -> PointIn:
    """Check one raw point (a CSV/Excel row or JSON) and return a :class:`PointIn`.

    Parameters
    ----------
    raw
        ``mn, name, enterprise, kind (outlet|dust|air_station), lon, lat, datum, active`` and
        the limits, either as a JSON ``limits`` column or as columns ``<pollutant>.limit``,
        ``<pollutant>.unit``, ``<pollutant>.period``, ``<pollutant>.consecutive``.
    datum
        Default datum for rows without one (else ``wgs84``).

    Returns
    -------
    PointIn

    Raises
    ------
    layers.errors.Invalid
        Naming the field, the value and what is allowed.
    """
    mn = raw.get("mn")
    if _blank(mn):
        raise Invalid("mn", mn, "the device id (MN) the data logger sends, 1-40 characters")
    mn = str(mn).strip()
    if len(mn) > 40 or any(c in mn for c in ";=&\r\n"):
        raise Invalid("mn", mn, "1-40 characters without ; = & or line breaks")
    name = raw.get("name")
    if _blank(name):
        raise Invalid("name", name, "a non-empty name")
    kind = "outlet" if _blank(raw.get("kind")) else str(raw["kind"]).strip()
    if kind not in KINDS:
        raise Invalid("kind", kind, f"one of {', '.join(KINDS)}")
    lon, lat = _number("lon", raw.get("lon")), _number("lat", raw.get("lat"))
    if not -180 <= lon <= 180:
        raise Invalid("lon", lon, "a longitude between -180 and 180")
    if not -90 <= lat <= 90:
        raise Invalid("lat", lat, "a latitude between -90 and 90")
    d = raw.get("datum") if not _blank(raw.get("datum")) else (datum or "wgs84")
    try:
        d = gcrs.parse_datum(str(d)).value
    except ValueError as exc:
        raise Invalid("datum", d, str(exc)) from None
    act = raw.get("active")
    active = True if _blank(act) else str(act).strip().lower() not in ("0", "false", "no", "n")
    return PointIn(mn=mn, name=str(name).strip()[:200], lon=lon, lat=lat, datum=d,
                   enterprise="" if _blank(raw.get("enterprise")) else str(raw["enterprise"]).strip()[:200],
                   kind=kind, limits=_limits_of(raw), active=active)


@dataclass(frozen=True)
class PointOutcome:
    mn: str
    created: bool
    changed: bool
    point_id: int


def _locate(index: BoundaryIndex | None, lon: np.ndarray, lat: np.ndarray, router: Router,
            tolerance_m: float, near_border_m: float) -> list[dict[str, Any]]:
    """Assignment and routing (category ``exceedance``) of storage points, vectorised."""
    out: list[dict[str, Any]] = []
    if index is None or len(lon) == 0:
        for _ in range(len(lon)):
            route = router.route(EXCEEDANCE, None, None, None)
            out.append({"city_code": None, "county_code": None, "township_code": None,
                        "body_code": route.body_code, "boundary_version_id": None,
                        "assign_method": AssignMethod.unassigned.value})
        return out
    res = assign_points(index, lon, lat, tolerance_m=tolerance_m, near_border_m=near_border_m)
    for i in range(len(lon)):
        r = res.iloc[i]
        codes = [None if c is None or (isinstance(c, float) and math.isnan(c)) else str(c)
                 for c in (r["city_code"], r["county_code"], r["township_code"])]
        route = router.route(EXCEEDANCE, *codes)
        method = str(r["method"])
        out.append({"city_code": codes[0], "county_code": codes[1], "township_code": codes[2],
                    "body_code": route.body_code,
                    "boundary_version_id": int(index.version) if method != "unassigned" else None,
                    "assign_method": method})
    return out


def upsert_points(session: Session, items: Sequence[PointIn], *, actor: str, now: datetime,
                  tolerance_m: float = 200.0, near_border_m: float = 50.0) -> list[PointOutcome]:
    """Create or update points by MN, located and routed, with one audit event per change.

    Parameters
    ----------
    session
        Unit of work.
    items
        Validated points (see :func:`validate_point`); a later duplicate MN wins.
    actor, now
        Audited author and time.
    tolerance_m, near_border_m
        Assignment tolerances (see :func:`geo.assign.assign`).

    Returns
    -------
    list of PointOutcome
        One per distinct MN, in input order of first appearance.
    """
    from layers.jurisdictions import INDEX_CACHE

    latest: dict[str, PointIn] = {}
    for it in items:
        latest[it.mn] = it
    if not latest:
        return []
    pts = list(latest.values())
    lon = np.array([p.lon for p in pts], dtype=float)
    lat = np.array([p.lat for p in pts], dtype=float)
    slon, slat = lon.copy(), lat.copy()
    datums = np.array([p.datum for p in pts])
    for d in set(datums.tolist()):
        m = datums == d
        slon[m], slat[m] = gcrs.to_storage(lon[m], lat[m], d)
    located = _locate(INDEX_CACHE.get(session), slon, slat, Router.load(session), tolerance_m, near_border_m)
    existing = {p.mn: p for p in session.scalars(select(MonitoringPoint).where(
        MonitoringPoint.mn.in_(list(latest))))}
    outcomes: list[PointOutcome] = []
    events: list[audit.EventIn] = []
    for p, x, y, loc in zip(pts, slon, slat, located, strict=True):
        values = {"name": p.name, "enterprise": p.enterprise, "kind": p.kind, "orig_lon": p.lon,
                  "orig_lat": p.lat, "orig_datum": p.datum,
                  "limits": {code: r.as_json() for code, r in sorted(p.limits.items())},
                  "active": p.active, **loc}
        old = existing.get(p.mn)
        if old is None:
            row = MonitoringPoint(mn=p.mn, geom=point_ewkt(float(x), float(y)), created_at=now, **values)
            session.add(row)
            session.flush()
            outcomes.append(PointOutcome(p.mn, True, True, row.id))
            events.append(audit.EventIn(now, actor, "monitoring.point_create", "monitoring_point",
                                        p.mn, {}, _audit_view(values)))
            continue
        before = {k: getattr(old, k) for k in values}
        changed = {k: v for k, v in values.items() if before[k] != v}
        if changed:
            session.execute(update(MonitoringPoint).where(MonitoringPoint.id == old.id).values(
                geom=point_ewkt(float(x), float(y)), **values))
            events.append(audit.EventIn(now, actor, "monitoring.point_update", "monitoring_point", p.mn,
                                        _audit_view({k: before[k] for k in changed}), _audit_view(changed)))
        outcomes.append(PointOutcome(p.mn, False, bool(changed), old.id))
    if events:
        audit.record(session, events)
    return outcomes


def _audit_view(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k != "geom"}


def import_points(session_scope: Callable[[], Any], path: Path, *, actor: str, now: datetime,
                  datum: str | None = None, sheet: str | None = None,
                  mapping: Mapping[str, str] | None = None) -> ImportSummary:
    """Import monitoring points from CSV/Excel; bad rows are reported, good rows stored.

    Parameters
    ----------
    session_scope
        Returns a unit-of-work context manager (one for the whole file: point lists are small).
    path
        The file; columns as in :func:`validate_point`.
    actor, now
        Audited author and time.
    datum
        Datum of rows without their own.
    sheet
        Excel sheet.
    mapping
        target → source column, for files whose headers differ.

    Returns
    -------
    ImportSummary
        ``created`` new points, ``existing`` points already known (updated when changed);
        errors also go to ``<file>.errors.csv`` (row numbers count the header as row 1).
    """
    import csv

    table = read_table(path, sheet=sheet)
    mapping = dict(mapping or {})
    for target, source in mapping.items():
        if target not in POINT_TARGETS:
            raise Invalid("--map", target, f"a target among {', '.join(POINT_TARGETS)}")
        if source not in table.columns:
            raise Invalid(f"--map {target}", source, f"a column of {path.name}: {', '.join(map(str, table.columns))}")
    renamed = {source: target for target, source in mapping.items()}
    summary = ImportSummary(rows=len(table))
    good: list[PointIn] = []
    for i, rec in enumerate(table.to_dict("records")):
        raw = {renamed.get(str(k), str(k)): v for k, v in rec.items()}
        try:
            good.append(validate_point(raw, datum=datum))
        except Invalid as exc:
            value = str(raw.get(exc.field, exc.detail.get("value", "")))
            summary.errors.append(RowError(i + 2, exc.field, value, exc.message))
    if good:
        with session_scope() as session:
            outs = upsert_points(session, good, actor=actor, now=now)
        summary.created = sum(o.created for o in outs)
        summary.existing = sum(not o.created for o in outs)
    report = path.with_name(path.name + ".errors.csv")
    if summary.errors:
        with report.open("w", newline="", encoding="utf-8-sig") as f:
            w = csv.writer(f)
            w.writerow(["row", "field", "value", "reason"])
            for e in summary.errors:
                w.writerow([e.row, e.field, e.value, e.reason])
        summary.error_report = report
    elif report.exists():
        report.unlink()
    return summary


def reassign_points(session: Session, *, actor: str, now: datetime, tolerance_m: float = 200.0,
                    near_border_m: float = 50.0) -> int:
    """Re-locate every point against the active boundary version (after an activation).

    Returns
    -------
    int
        Points whose jurisdiction or body changed (each audited).
    """
    from layers.jurisdictions import INDEX_CACHE

    rows = session.execute(select(MonitoringPoint.id, MonitoringPoint.mn, MonitoringPoint.geom,
                                  MonitoringPoint.city_code, MonitoringPoint.county_code,
                                  MonitoringPoint.township_code, MonitoringPoint.body_code,
                                  MonitoringPoint.boundary_version_id, MonitoringPoint.assign_method)).all()
    if not rows:
        return 0
    shapes: list[Any] = [to_shape(r.geom) for r in rows]  # geom is NOT NULL: all points
    lon = np.array([s.x for s in shapes], dtype=np.float64)
    lat = np.array([s.y for s in shapes], dtype=np.float64)
    located = _locate(INDEX_CACHE.get(session), lon, lat, Router.load(session), tolerance_m, near_border_m)
    events = []
    for r, loc in zip(rows, located, strict=True):
        before = {k: getattr(r, k) for k in loc}
        if before != loc:
            session.execute(update(MonitoringPoint).where(MonitoringPoint.id == r.id).values(**loc))
            events.append(audit.EventIn(now, actor, "monitoring.point_reassign", "monitoring_point", r.mn,
                                        before, loc))
    if events:
        audit.record(session, events)
    return len(events)


def point_scope_clause(p: Principal) -> ColumnElement[bool]:
    """SQL condition restricting points to ``p``'s scope (same rule as leads)."""
    return scope_clause(p, MonitoringPoint)


def list_points(session: Session, p: Principal, *, jurisdiction: str | None = None,
                body: str | None = None,
                kind: str | None = None) -> list[tuple[MonitoringPoint, MonitoringLink | None]]:
    """Points visible to ``p`` with their link state, by MN."""
    stmt = (select(MonitoringPoint, MonitoringLink)
                         .outerjoin(MonitoringLink, MonitoringLink.mn == MonitoringPoint.mn)
                         .where(point_scope_clause(p)).order_by(MonitoringPoint.mn))
    if jurisdiction:
        stmt = stmt.where(or_(MonitoringPoint.city_code == jurisdiction,
                              MonitoringPoint.county_code == jurisdiction,
                              MonitoringPoint.township_code == jurisdiction))
    if body:
        stmt = stmt.where(MonitoringPoint.body_code == body)
    if kind:
        stmt = stmt.where(MonitoringPoint.kind == kind)
    return [(pt, link) for pt, link in session.execute(stmt).all()]


def get_point(session: Session, p: Principal, mn: str) -> MonitoringPoint:
    """One point by MN; :class:`NotFound` when absent *or* out of scope."""
    pt = session.scalar(select(MonitoringPoint).where(MonitoringPoint.mn == mn, point_scope_clause(p)))
    if pt is None:
        raise NotFound(f"no monitoring point {mn!r}", field="mn")
    return pt


def latest_readings(session: Session, p: Principal, mn: str) -> list[MonitoringReading]:
    """The newest reading of each pollutant and CN of a point in scope."""
    get_point(session, p, mn)
    newest = (select(MonitoringReading.pollutant, MonitoringReading.cn,
                     func.max(MonitoringReading.data_time).label("t"))
              .where(MonitoringReading.mn == mn)
              .group_by(MonitoringReading.pollutant, MonitoringReading.cn).subquery())
    stmt = (select(MonitoringReading).join(newest, and_(
        MonitoringReading.pollutant == newest.c.pollutant, MonitoringReading.cn == newest.c.cn,
        MonitoringReading.data_time == newest.c.t)).where(MonitoringReading.mn == mn)
        .order_by(MonitoringReading.pollutant, MonitoringReading.cn))
    return list(session.scalars(stmt))


def reading_history(session: Session, p: Principal, mn: str, *, pollutant: str | None = None,
                    cn: str | None = None, since: datetime | None = None, until: datetime | None = None,
                    limit: int = 1000) -> list[MonitoringReading]:
    """Readings of a point in scope, oldest first, filtered by pollutant, CN and DataTime."""
    get_point(session, p, mn)
    stmt = select(MonitoringReading).where(MonitoringReading.mn == mn)
    if pollutant:
        stmt = stmt.where(MonitoringReading.pollutant == pollutant)
    if cn:
        stmt = stmt.where(MonitoringReading.cn == cn)
    if since is not None:
        stmt = stmt.where(MonitoringReading.data_time >= since)
    if until is not None:
        stmt = stmt.where(MonitoringReading.data_time < until)
    return list(session.scalars(stmt.order_by(MonitoringReading.data_time, MonitoringReading.id).limit(limit)))


def list_quarantine(session: Session, *, kind: str | None = None, since: datetime | None = None,
                    limit: int = 100) -> list[MonitoringQuarantine]:
    """Quarantined items, newest first."""
    stmt = select(MonitoringQuarantine)
    if kind:
        stmt = stmt.where(MonitoringQuarantine.kind == kind)
    if since is not None:
        stmt = stmt.where(MonitoringQuarantine.received_at >= since)
    return list(session.scalars(stmt.order_by(MonitoringQuarantine.id.desc()).limit(limit)))


def list_episodes(session: Session, *, mn: str | None = None, status: str | None = None) -> list[MonitoringEpisode]:
    """Episodes, newest first."""
    stmt = select(MonitoringEpisode)
    if mn:
        stmt = stmt.where(MonitoringEpisode.mn == mn)
    if status:
        stmt = stmt.where(MonitoringEpisode.status == status)
    return list(session.scalars(stmt.order_by(MonitoringEpisode.id.desc())))


# =============================================================================== ingest


@dataclass(frozen=True, slots=True)
class Accepted:
    """A packet the receiver accepted (CRC good, split reassembled)."""

    packet: Packet
    received_at: datetime
    peer: str


@dataclass(frozen=True, slots=True)
class Dropped:
    """Bytes the receiver could not accept, to be quarantined."""

    raw: bytes
    reason: str
    received_at: datetime
    peer: str


IngestItem = Accepted | Dropped


@dataclass
class IngestResult:
    """What one :func:`store_batch` call did."""

    packets: int = 0
    readings_new: int = 0
    readings_duplicate: int = 0
    quarantined: int = 0
    episodes_opened: int = 0
    episodes_updated: int = 0
    episodes_closed: int = 0
    leads_created: list[int] = field(default_factory=list)

    def add(self, other: IngestResult) -> None:
        for name in ("packets", "readings_new", "readings_duplicate", "quarantined", "episodes_opened",
                     "episodes_updated", "episodes_closed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.leads_created += other.leads_created


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _is_finite(v: Any) -> bool:
    # What may be stored as a number: anything but a float infinity or NaN (stored as null).
    return not isinstance(v, float) or math.isfinite(v)


_HEADLINE = {"2011": ("Rtd", "ZsRtd"), "2051": ("Avg", "ZsAvg"), "2061": ("Avg", "ZsAvg"),
             "2031": ("Avg", "ZsAvg")}


def _headline(cn: str, values: Mapping[str, float | None]) -> float | None:
    for name in _HEADLINE.get(cn, ("Rtd", "Avg")):
        v = values.get(name)
        if v is not None:
            return float(v)
    for name in ("Rtd", "Avg", "Data", "Max", "Min", "Cou"):
        v = values.get(name)
        if v is not None:
            return float(v)
    return None


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0].strip()[:40] or "unknown"


def _quarantine_row(raw: bytes, reason: str, received_at: datetime, peer: str, mn: str | None = None) -> dict[str, Any]:
    if mn is None:
        # Best effort: the MN helps an operator find the device even when the CRC is wrong.
        i = raw.find(b"MN=")
        if i >= 0:
            j = min((k for k in (raw.find(b";", i), raw.find(b"&", i)) if k > 0), default=i + 43)
            mn = raw[i + 3:j].decode("utf-8", "replace")[:40] or None
    # The raw bytes are kept verbatim; the text columns must not hold NUL, which PostgreSQL refuses
    # (the whole row, and with it the bytes, would be lost) and which means nothing in them anyway.
    reason, peer = _no_nul(reason), _no_nul(peer)
    return {"received_at": received_at, "peer": peer[:80], "reason": reason, "kind": _reason_kind(reason),
            "mn": None if mn is None else _no_nul(mn), "size": len(raw), "raw": raw}


def _no_nul(text: str) -> str:
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


# ------------------------------------------------------------------- set-based statements
#
# The hot path writes a whole batch with one statement per table, whatever its size: the rows
# travel as one JSON array parameter (encoded by the C encoder in one call) that the database
# unpacks itself, ``jsonb_array_elements`` on PostgreSQL and ``json_each`` on SQLite. The
# statement text is fixed, so it is parsed and planned once per connection and the driver
# caches its conversion, and no layer does per-row work in Python. (The insertmanyvalues route
# this replaces spent most of a batch building and converting giant multi-row statements;
# arrays per column with ``unnest`` spent it in psycopg's pure-Python text-array quoting.)

_Cols = tuple[tuple[str, str], ...]  # (column, PostgreSQL type of one value)

_READING_COLS: _Cols = (("mn", "varchar"), ("cn", "varchar"), ("data_time", "timestamptz"),
                        ("pollutant", "varchar"), ("value", "float8"), ("fields", "jsonb"), ("flag", "varchar"),
                        ("received_at", "timestamptz"), ("skew_s", "float8"))
_LINK_COLS: _Cols = (("mn", "varchar"), ("last_received_at", "timestamptz"), ("last_data_time", "timestamptz"),
                     ("last_skew_s", "float8"), ("last_peer", "varchar"), ("packets", "int4"), ("readings", "int4"))
_RUN_STATE = ("over", "under", "run_start", "run_max", "last_data_time", "episode_id")
_RUN_STATE_COLS: _Cols = (("over", "int4"), ("under", "int4"), ("run_start", "timestamptz"),
                          ("run_max", "float8"), ("last_data_time", "timestamptz"), ("episode_id", "int4"))
_RUN_UPDATE_COLS: _Cols = (("id", "int4"), *_RUN_STATE_COLS)
_RUN_INSERT_COLS: _Cols = (("mn", "varchar"), ("pollutant", "varchar"), ("cn", "varchar"), *_RUN_STATE_COLS)


def _names(cols: _Cols, prefix: str = "") -> str:
    return ", ".join(f'{prefix}"{c}"' for c, _ in cols)


@functools.lru_cache(maxsize=64)
def _rows_from(pg: bool, cols: _Cols) -> str:
    """A FROM item ``v`` yielding the rows passed by :func:`_rows_params`."""
    if pg:
        picks = ", ".join((f"r->{i}" if t == "jsonb" else f"CAST(r->>{i} AS {t})") + f' AS "{c}"'
                          for i, (c, t) in enumerate(cols))
        return f"(SELECT {picks} FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS r) AS v"
    picks = ", ".join(f"json_extract(value, '$[{i}]') AS \"{c}\"" for i, (c, _) in enumerate(cols))
    return f"(SELECT {picks} FROM json_each(:rows)) AS v"


def _rows_params(rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """Parameters of :func:`_rows_from`: the rows (values in column order, datetimes already
    through :class:`_Stamps`) as one JSON array, encoded in C in one call."""
    return {"rows": json.dumps(rows, separators=(",", ":"), allow_nan=False)}


def _mn_in(pg: bool, column: str) -> str:
    """``column`` is one of the MNs in parameter ``:mns`` (see :func:`_mns_param`)."""
    return f"{column} = ANY(CAST(:mns AS varchar[]))" if pg else f"{column} IN (SELECT value FROM json_each(:mns))"


def _mns_param(pg: bool, mns: Iterable[str]) -> Any:
    return list(mns) if pg else json.dumps(list(mns))


class _Stamps:
    """Datetimes as text for :func:`_rows_params`, memoised (a batch has few distinct DataTimes
    and receive times).

    SQLite gets exactly what SQLAlchemy's own bind processing stores, so keys and range queries
    match rows written by any other path; PostgreSQL gets ISO 8601 in UTC for ``timestamptz``.
    """

    def __init__(self, session: Session) -> None:
        dialect = session.get_bind().dialect
        processor = _READINGS.c.data_time.type.dialect_impl(dialect).bind_processor(dialect)
        assert processor is not None  # UTCDateTime always has one (it checks the zone)
        self.pg = dialect.name == "postgresql"
        self._process: Callable[[Any], Any] = processor
        self._memo: dict[datetime, str] = {}

    def __call__(self, moment: datetime | None) -> str | None:
        if moment is None:
            return None
        out = self._memo.get(moment)
        if out is None:
            bound = self._process(moment)
            out = self._memo[moment] = bound.isoformat() if self.pg else bound
        return out

    def returned(self, value: Any) -> str | None:
        """A datetime column as read back by the driver, in the form :meth:`__call__` gives."""
        return self(value) if self.pg else value


@dataclass(frozen=True, slots=True)
class _Point:
    active: bool
    limits: str  # the stored JSON text: the key of the parsed-rules cache
    missing_open: bool  # an open data-missing episode, to close now that data came
    runs: dict[tuple[str, str], dict[str, Any]]  # (pollutant, CN) → stored exceedance run state


_RUN_NAMES = ("id", "mn", "pollutant", "cn", *_RUN_STATE)


def _load_points(session: Session, pg: bool, mns: Sequence[str]) -> dict[str, _Point]:
    """The batch's points with everything the batch needs from them, in one round trip:
    limits, whether a data-missing episode is open, and their exceedance run states."""
    pt, runs, ep = MonitoringPoint, _RUNS.c, MonitoringEpisode
    missing = select(ep.id).where(ep.mn == pt.mn, ep.kind == DATA_MISSING, ep.status == "open").exists()
    stmt = (select(pt.mn, pt.active, sql_cast(pt.limits, Text), missing, *(runs[c] for c in _RUN_NAMES))
            .select_from(cast(Table, pt.__table__).outerjoin(_RUNS, runs.mn == pt.mn))
            .where(sql_text(_mn_in(pg, f"{pt.__tablename__}.mn")).bindparams(mns=_mns_param(pg, mns))))
    out: dict[str, _Point] = {}
    # Core, not the ORM: plain rows are all this needs, without the ORM's result layers.
    for mn, active, limits, missing_open, *run in session.connection().execute(stmt).all():
        point = out.get(mn)
        if point is None:
            point = out[mn] = _Point(bool(active), limits or "{}", bool(missing_open), {})
        if run[0] is not None:
            state = dict(zip(_RUN_NAMES, run, strict=True))
            point.runs[(state["pollutant"], state["cn"])] = state
    return out


# (mn, cn, DataTime as bound, pollutant): the storage key of a reading.
_Key = tuple[str, str, Any, str]


@dataclass(slots=True)
class _NewReading:
    mn: str
    cn: str
    data_time: datetime
    pollutant: str
    values: dict[str, float | None]
    flag: str | None


def store_batch(session: Session, items: Sequence[IngestItem], *, now: datetime, actor: str = ACTOR) -> IngestResult:
    """Write a batch from the receiver in the caller's unit of work.

    Readings are inserted with one ``INSERT … ON CONFLICT DO NOTHING RETURNING`` on the key
    (MN, CN, DataTime, pollutant), so a retransmission stores nothing twice, whether it repeats
    a stored reading or one earlier in the same batch; only readings that were actually new
    feed the exceedance engine. Packets from unknown MNs and data packets without a DataTime
    are quarantined with their raw bytes. Every point that sent data has its link state
    (receive time, DataTime, clock skew, peer) updated and any open data-missing episode closed.

    Parameters
    ----------
    session
        Unit of work.
    items
        :class:`Accepted` packets and :class:`Dropped` bytes, in arrival order.
    now
        Time of the write (lead receipt time and audit time).
    actor
        Audited author of leads and episode changes.

    Returns
    -------
    IngestResult
    """
    res = IngestResult()
    pg = _is_pg(session)
    stamp = _Stamps(session)
    quarantine: list[dict[str, Any]] = []
    accepted: list[Accepted] = []
    for it in items:
        if isinstance(it, Dropped):
            quarantine.append(_quarantine_row(it.raw, it.reason, it.received_at, it.peer))
        else:
            accepted.append(it)
    mns = sorted({a.packet.mn for a in accepted if a.packet.mn})
    points = _load_points(session, pg, mns) if mns else {}
    rows: dict[_Key, list[Any]] = {}  # values in _READING_COLS order
    news: dict[_Key, _NewReading] = {}
    links: dict[str, dict[str, Any]] = {}
    for a in accepted:
        pk = a.packet
        mn = pk.mn
        if not mn or mn not in points:
            quarantine.append(_quarantine_row(
                pk.raw, f"unknown_mn: MN={mn!r} is not a registered monitoring point "
                        "(import it with `leadgrid monitoring import`)", a.received_at, a.peer, mn or None))
            continue
        if pk.data_time is None and any(r.data_time is None for r in pk.readings):
            quarantine.append(_quarantine_row(pk.raw, "bad_datatime: data without a DataTime cannot be "
                                              "stored idempotently", a.received_at, a.peer, mn))
            continue
        res.packets += 1
        received = stamp(a.received_at)
        skew = None if pk.clock_skew is None else pk.clock_skew.total_seconds()
        for r in pk.readings:
            dt = r.data_time or pk.data_time
            assert dt is not None  # checked above
            cn = r.cn or pk.cn or ""
            pollutant = r.pollutant[:40]
            key = (mn, cn, stamp(dt), pollutant)
            if key in rows:
                res.readings_duplicate += 1  # retransmitted within the same batch
                continue
            values = dict(r.values)
            for k, v in values.items():
                if v is not None and not _is_finite(v):
                    values[k] = None
            fields: dict[str, Any] = values  # serialised below, never changed
            if r.texts:
                fields = {**values, "texts": dict(r.texts)}
            flag = (r.flag or None) and r.flag[:4]
            rows[key] = [mn, cn, key[2], pollutant, _headline(cn, values), fields, flag, received, skew]
            news[key] = _NewReading(mn, cn, dt, pollutant, values, flag)
        link = links.get(mn)
        if link is None:
            link = links[mn] = {"packets": 0, "readings": 0, "at": a.received_at, "peer": a.peer[:80],
                                "data_time": None, "skew": None}
        link["packets"] += 1
        link["readings"] += len(pk.readings)
        if a.received_at >= link["at"]:
            link["at"], link["peer"] = a.received_at, a.peer[:80]
        if pk.data_time is not None:
            link["data_time"], link["skew"] = pk.data_time, skew
    conn = session.connection()
    if quarantine:
        _insert_quarantine(conn, pg, stamp, quarantine)
        res.quarantined = len(quarantine)
    new_keys: list[_Key] = []
    if rows:
        sql = (f"INSERT INTO {_READINGS.name} ({_names(_READING_COLS)}) "
               f"SELECT {_names(_READING_COLS, 'v.')} FROM {_rows_from(pg, _READING_COLS)} WHERE true "
               "ON CONFLICT (mn, cn, data_time, pollutant) DO NOTHING RETURNING mn, cn, data_time, pollutant")
        returned = conn.execute(sql_text(sql), _rows_params(list(rows.values()))).all()
        new_keys = [(mn, cn, stamp.returned(dt), pollutant) for mn, cn, dt, pollutant in returned]
        res.readings_new = len(new_keys)
        res.readings_duplicate += len(rows) - len(new_keys)
    if links:
        _upsert_links(session, pg, [(mn, stamp(v["at"]), stamp(v["data_time"]), v["skew"], v["peer"], v["packets"],
                                     v["readings"]) for mn, v in sorted(links.items())])
        silent = [mn for mn in links if points[mn].missing_open]
        if silent:
            res.episodes_closed += _close_missing(session, silent, now=now, actor=actor)
    if new_keys:
        # The returned keys went through stamp.returned: the same form as the keys of ``news``.
        fresh = [news[k] for k in new_keys if k in news]
        _exceedance(session, pg, stamp, fresh, points, now=now, actor=actor, res=res)
    return res


_QUARANTINE_COLS: _Cols = (("received_at", "timestamptz"), ("peer", "varchar"), ("reason", "text"),
                           ("kind", "varchar"), ("mn", "varchar"), ("size", "int4"), ("raw", "bytea"))


def _insert_quarantine(conn: Any, pg: bool, stamp: _Stamps, rows: list[dict[str, Any]]) -> None:
    if not pg:
        # sqlite3's executemany is one C loop over a prepared statement: nothing to gain.
        conn.execute(insert(_QUARANTINE), rows)
        return
    # psycopg would send one statement per row (pipelined); one statement for all, as for the
    # readings. The raw bytes travel as hex, which JSON can carry.
    picks = ", ".join(f"decode(r->>{i}, 'hex')" if t == "bytea" else f"CAST(r->>{i} AS {t})"
                      for i, (_, t) in enumerate(_QUARANTINE_COLS))
    sql = (f"INSERT INTO {_QUARANTINE.name} ({_names(_QUARANTINE_COLS)}) "
           f"SELECT {picks} FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS r")
    conn.execute(sql_text(sql), _rows_params([
        [stamp(q["received_at"]), q["peer"], q["reason"], q["kind"], q["mn"], q["size"], q["raw"].hex()]
        for q in rows]))


def _upsert_links(session: Session, pg: bool, rows: list[tuple[Any, ...]]) -> None:
    t = _LINKS.name
    sql = (f"INSERT INTO {t} ({_names(_LINK_COLS)}) SELECT {_names(_LINK_COLS, 'v.')} "
           f"FROM {_rows_from(pg, _LINK_COLS)} WHERE true ON CONFLICT (mn) DO UPDATE SET "
           f"packets = {t}.packets + excluded.packets, readings = {t}.readings + excluded.readings, "
           "last_received_at = excluded.last_received_at, last_peer = excluded.last_peer, "
           # Keep the previous DataTime/skew when this batch had none (heartbeats, answers).
           f"last_data_time = COALESCE(excluded.last_data_time, {t}.last_data_time), "
           f"last_skew_s = COALESCE(excluded.last_skew_s, {t}.last_skew_s)")
    session.connection().execute(sql_text(sql), _rows_params(rows))  # rows sorted: stable lock order


# ------------------------------------------------------------------------------ episodes


@functools.lru_cache(maxsize=4096)
def _rules_cached(limits_json: str) -> dict[str, Rule]:
    # Thousands of points share a handful of limit sets: parse each distinct stored text once.
    try:
        return parse_limits(json.loads(limits_json))
    except (Invalid, ValueError):
        log.warning("ignoring invalid stored limits %s", limits_json)
        return {}


def _exceedance(session: Session, pg: bool, stamp: _Stamps, new: list[_NewReading], points: Mapping[str, _Point],
                *, now: datetime, actor: str, res: IngestResult) -> None:
    """Feed the new readings to the engine, per (point, pollutant, CN) with a rule only."""
    groups: dict[tuple[str, str, str], list[Sample]] = defaultdict(list)
    rules: dict[tuple[str, str, str], Rule] = {}
    for row in new:
        pt = points.get(row.mn)
        if pt is None or not pt.active:
            continue
        rule = _rules_cached(pt.limits).get(row.pollutant)
        if rule is None or rule.cn != row.cn:
            continue
        key = (row.mn, row.pollutant, row.cn)
        rules[key] = rule
        groups[key].append(Sample(row.data_time, row.values, row.flag))
    if not groups:
        return
    # The run state is read (with the points, by _load_points) and written set-based: every
    # reading of every point with a limit passes here, so per-run statements or ORM objects
    # would cost more than the readings.
    stored: dict[tuple[str, str, str], dict[str, Any]] = {}
    for key in groups:
        run = points[key[0]].runs.get((key[1], key[2]))
        if run is not None:
            stored[key] = run
    episode_ids = [r["episode_id"] for r in stored.values() if r["episode_id"] is not None]
    episodes = {e.id: e for e in session.scalars(select(MonitoringEpisode).where(
        MonitoringEpisode.id.in_(episode_ids)))} if episode_ids else {}
    openings: list[tuple[tuple[str, str, str], Rule, EpisodeEvent, dict[str, Any]]] = []
    audit_events: list[audit.EventIn] = []
    fresh: list[dict[str, Any]] = []
    for key in sorted(groups):
        rule = rules[key]
        run = stored.get(key)
        if run is None:
            run = {"mn": key[0], "pollutant": key[1], "cn": key[2], "over": 0, "under": 0, "run_start": None,
                   "run_max": None, "last_data_time": None, "episode_id": None}
            fresh.append(run)
        ep = episodes.get(run["episode_id"]) if run["episode_id"] is not None else None
        is_open = ep is not None and ep.status == "open"
        state = RunState(over=run["over"], under=run["under"], run_start=run["run_start"], run_max=run["run_max"],
                         last_data_time=run["last_data_time"], episode_open=is_open,
                         episode_start=ep.started_at if ep is not None and is_open else None,
                         episode_max=ep.max_value if ep is not None and is_open else None,
                         episode_count=ep.count if ep is not None and is_open else 0,
                         episode_last=ep.last_at if ep is not None and is_open else None)
        state, events = evaluate(rule, state, groups[key])
        run.update(over=state.over, under=state.under, run_start=state.run_start, run_max=state.run_max,
                   last_data_time=state.last_data_time)
        for ev in events:
            if ev.kind is EventKind.opened:
                openings.append((key, rule, ev, run))
            elif ev.kind is EventKind.updated and ep is not None and ep.status == "open":
                audit_events.append(_update_episode(session, ep, ev, now=now, actor=actor))
                res.episodes_updated += 1
            elif ev.kind is EventKind.closed:
                if ep is None or ep.status != "open":
                    # Opened earlier in this very batch: its row is created below, then closed.
                    openings.append((key, rule, ev, run))
                    continue
                audit_events += _close_episode(session, ep, ev, now=now, actor=actor)
                run["episode_id"] = None
                res.episodes_closed += 1
    if openings:
        _open_exceedances(session, openings, now=now, actor=actor, res=res, audit_events=audit_events)
    conn = session.connection()

    def state_of(r: dict[str, Any]) -> list[Any]:
        return [r["over"], r["under"], stamp(r["run_start"]), r["run_max"], stamp(r["last_data_time"]),
                r["episode_id"]]

    if fresh:
        sql = (f"INSERT INTO {_RUNS.name} ({_names(_RUN_INSERT_COLS)}) SELECT {_names(_RUN_INSERT_COLS, 'v.')} "
               f"FROM {_rows_from(pg, _RUN_INSERT_COLS)}")
        conn.execute(sql_text(sql), _rows_params([[r["mn"], r["pollutant"], r["cn"], *state_of(r)] for r in fresh]))
    if stored:
        sets = ", ".join(f'"{c}" = v."{c}"' for c in _RUN_STATE)
        sql = f"UPDATE {_RUNS.name} SET {sets} FROM {_rows_from(pg, _RUN_UPDATE_COLS)} WHERE {_RUNS.name}.id = v.id"
        conn.execute(sql_text(sql), _rows_params([[r["id"], *state_of(r)] for r in stored.values()]))
    if audit_events:
        audit.record(session, audit_events)


def _lead_point(session: Session, mns: Iterable[str]) -> dict[str, tuple[float, float, str, str]]:
    out = {}
    for row in session.execute(select(MonitoringPoint.mn, MonitoringPoint.geom, MonitoringPoint.name,
                                      MonitoringPoint.enterprise).where(MonitoringPoint.mn.in_(sorted(set(mns))))):
        shp = to_shape(row.geom)
        assert shp is not None  # geom is NOT NULL
        out[row.mn] = (shp.x, shp.y, row.name, row.enterprise)
    return out


def _open_exceedances(session: Session, openings: list[tuple[tuple[str, str, str], Rule, EpisodeEvent, dict[str, Any]]],
                      *, now: datetime, actor: str, res: IngestResult, audit_events: list[audit.EventIn]) -> None:
    where = _lead_point(session, (k[0] for k, _, _, _ in openings))
    items: list[leads.LeadIn] = []
    for (mn, pollutant, _cn), rule, ev, _run in openings:
        lon, lat, name, enterprise = where[mn]
        who = f"{enterprise} {name}".strip()
        items.append(leads.LeadIn(
            channel=leads.Channel.monitoring.value, external_id=f"{mn}:{pollutant}:{ev.start:%Y%m%dT%H%M%SZ}",
            category=EXCEEDANCE, reported_at=ev.start, lon=lon, lat=lat, datum="wgs84",
            description=(f"在线监测超标 / online monitoring exceedance: {who} (MN {mn}) {pollutant} "
                         f"max {ev.max_value:g} > limit {rule.limit:g} {rule.unit} ({rule.period.value} data, "
                         f"{ev.count} values above the limit, {rule.consecutive} in a row opens an episode) "
                         f"since {ev.start.isoformat()}")[:leads.MAX_DESCRIPTION],
        ))
    outcomes = leads.submit(session, items, actor=actor, now=now)
    for ((mn, pollutant, cn), rule, ev, run), out in zip(openings, outcomes, strict=True):
        ep = session.scalar(select(MonitoringEpisode).where(
            MonitoringEpisode.lead_id == out.lead_id, MonitoringEpisode.kind == EXCEEDANCE))
        if ep is None:
            ep = MonitoringEpisode(mn=mn, kind=EXCEEDANCE, pollutant=pollutant, cn=cn, limit_value=rule.limit,
                                   unit=rule.unit, status="open", started_at=ev.start, last_at=ev.last,
                                   max_value=ev.max_value, count=ev.count, lead_id=out.lead_id,
                                   created_at=now, updated_at=now)
            session.add(ep)
            session.flush()
            res.episodes_opened += 1
            if out.created:
                res.leads_created.append(out.lead_id)
        if ev.kind is EventKind.closed:
            audit_events += _close_episode(session, ep, ev, now=now, actor=actor)
            res.episodes_closed += 1
            run["episode_id"] = None
        else:
            run["episode_id"] = ep.id
    session.flush()


def _update_episode(session: Session, ep: MonitoringEpisode, ev: EpisodeEvent, *, now: datetime,
                    actor: str) -> audit.EventIn:
    before = {"max_value": ep.max_value, "count": ep.count, "last_at": ep.last_at}
    ep.max_value, ep.count, ep.last_at, ep.updated_at = ev.max_value, ev.count, ev.last, now
    return audit.EventIn(now, actor, "monitoring.episode_update", "lead", str(ep.lead_id), before,
                         {"max_value": ev.max_value, "count": ev.count, "last_at": ev.last,
                          "episode_id": ep.id})


def _close_episode(session: Session, ep: MonitoringEpisode, ev: EpisodeEvent, *, now: datetime,
                   actor: str) -> list[audit.EventIn]:
    ep.max_value, ep.count, ep.last_at = ev.max_value, ev.count, ev.last
    ep.status, ep.ended_at, ep.updated_at = "closed", ev.end, now
    out = [audit.EventIn(now, actor, "monitoring.episode_close", "lead", str(ep.lead_id),
                         {"status": "open"},
                         {"status": "closed", "ended_at": ev.end, "max_value": ev.max_value,
                          "count": ev.count, "episode_id": ep.id},
                         reason="values back under the limit")]
    if ep.lead_id is not None:
        out += _close_lead(session, ep.lead_id, now=now, actor=actor,
                           reason=f"{ep.kind} episode {ep.id} ended at {ev.end.isoformat() if ev.end else '?'}")
    return out


def _close_lead(session: Session, lead_id: int, *, now: datetime, actor: str, reason: str) -> list[audit.EventIn]:
    # A plain update until the workflow offers a system transition for monitoring leads; a lead
    # someone has already closed or merged is left alone.
    status = session.scalar(select(Lead.status).where(Lead.id == lead_id))
    if status is None or status not in LEAD_OPEN_STATES:
        return []
    session.execute(update(Lead).where(Lead.id == lead_id).values(
        status="closed", closed_at=now, updated_at=now, row_version=Lead.row_version + 1))
    return [audit.EventIn(now, actor, "lead.status", "lead", str(lead_id), {"status": status},
                          {"status": "closed", "closed_at": now}, reason=reason)]


def _close_missing(session: Session, mns: Iterable[str], *, now: datetime, actor: str) -> int:
    # Few points are silent at any time: list the open data-missing episodes (a walk of the
    # partial index of open episodes) instead of sending every MN of the batch to the database.
    wanted = set(mns)
    ids = [i for i, mn in session.execute(select(MonitoringEpisode.id, MonitoringEpisode.mn).where(
        MonitoringEpisode.kind == DATA_MISSING, MonitoringEpisode.status == "open")) if mn in wanted]
    if not ids:
        return 0
    eps = session.scalars(select(MonitoringEpisode).where(MonitoringEpisode.id.in_(ids))
                          .order_by(MonitoringEpisode.id)).all()
    events: list[audit.EventIn] = []
    for ep in eps:
        ev = EpisodeEvent(EventKind.closed, ep.started_at, None, ep.count, ep.last_at, end=now)
        events += _close_episode(session, ep, ev, now=now, actor=actor)
    audit.record(session, events)
    return len(eps)


def check_missing(session: Session, *, now: datetime, silence: timedelta, actor: str = ACTOR) -> list[int]:
    """Raise one ``data_missing`` lead per point silent for longer than ``silence``.

    A point is silent since its last received packet with data (or since it was registered,
    if it never sent any). A point that already has an open data-missing episode gets no
    second lead; the episode closes when data arrives again (:func:`store_batch`).

    Parameters
    ----------
    session
        Unit of work.
    now
        The check time.
    silence
        How long a point may stay quiet.
    actor
        Audited author.

    Returns
    -------
    list of int
        Ids of the episodes opened.
    """
    if silence <= timedelta(0):
        raise Invalid("silence", silence, "a positive duration")
    last = func.coalesce(MonitoringLink.last_received_at, MonitoringPoint.created_at)
    already = select(MonitoringEpisode.id).where(
        MonitoringEpisode.mn == MonitoringPoint.mn, MonitoringEpisode.kind == DATA_MISSING,
        MonitoringEpisode.status == "open").exists()
    rows = session.execute(
        select(MonitoringPoint.mn, MonitoringPoint.name, MonitoringPoint.enterprise, MonitoringPoint.geom,
               MonitoringLink.last_received_at, MonitoringPoint.created_at)
        .outerjoin(MonitoringLink, MonitoringLink.mn == MonitoringPoint.mn)
        .where(MonitoringPoint.active.is_(True), last < now - silence, ~already)
        .order_by(MonitoringPoint.mn)).all()
    if not rows:
        return []
    items = []
    starts = []
    for r in rows:
        since = r.last_received_at or r.created_at
        starts.append(since)
        shp = to_shape(r.geom)
        assert shp is not None
        who = f"{r.enterprise} {r.name}".strip()
        items.append(leads.LeadIn(
            channel=leads.Channel.monitoring.value, external_id=f"{r.mn}:{DATA_MISSING}:{since:%Y%m%dT%H%M%SZ}",
            category=DATA_MISSING, reported_at=now, lon=shp.x, lat=shp.y, datum="wgs84",
            description=(f"监测数据缺失 / monitoring data missing: {who} (MN {r.mn}) silent since "
                         f"{since.isoformat()} (more than {silence.total_seconds() / 60:g} minutes)"),
        ))
    outcomes = leads.submit(session, items, actor=actor, now=now)
    opened = []
    for r, since, out in zip(rows, starts, outcomes, strict=True):
        ep = MonitoringEpisode(mn=r.mn, kind=DATA_MISSING, pollutant="", cn="", status="open",
                               started_at=since, last_at=now, count=0, lead_id=out.lead_id,
                               created_at=now, updated_at=now)
        session.add(ep)
        session.flush()
        opened.append(ep.id)
    return opened


# ============================================================================== ranking


@dataclass(frozen=True)
class RankRow:
    """One jurisdiction's pollution index and its parts (see the module docstring)."""

    rank: int
    code: str
    name: str
    index: float
    exceedance_hours: float
    weighted_hours_per_point: float
    points: int
    open_leads: int
    open_leads_per_10k_km2: float
    area_km2: float


SEVERITY_CAP = 5.0
WEIGHT_EXCEEDANCE = 0.6
WEIGHT_LEADS = 0.4


def ranking(session: Session, *, level: str, now: datetime, days: int = 30) -> list[RankRow]:
    """Pollution index per jurisdiction of ``level``, worst first (formula: module docstring).

    Parameters
    ----------
    session
        Any session (read only).
    level
        ``county`` or ``township`` (``city`` works too).
    now
        End of the window.
    days
        Window length.

    Returns
    -------
    list of RankRow
        Every jurisdiction of the active version at that level; ties keep code order.
    """
    if level not in ("city", "county", "township"):
        raise Invalid("level", level, "county or township (or city)")
    if not 1 <= days <= 3660:
        raise Invalid("days", days, "a whole number of days from 1 to 3660")
    from layers.jurisdictions import list_active

    areas = list_active(session, level=level)
    col = {"city": "city_code", "county": "county_code", "township": "township_code"}[level]
    window_start = now - timedelta(days=days)
    pcol = getattr(MonitoringPoint, col)
    point_counts: dict[str | None, int] = dict(session.execute(
        select(pcol, func.count(MonitoringPoint.id)).where(MonitoringPoint.active.is_(True)).group_by(pcol)).all())
    weighted: dict[str, float] = defaultdict(float)
    hours: dict[str, float] = defaultdict(float)
    eps = session.execute(
        select(pcol, MonitoringEpisode.started_at, MonitoringEpisode.ended_at, MonitoringEpisode.max_value,
               MonitoringEpisode.limit_value)
        .join(MonitoringPoint, MonitoringPoint.mn == MonitoringEpisode.mn)
        .where(MonitoringEpisode.kind == EXCEEDANCE, MonitoringEpisode.started_at < now,
               or_(MonitoringEpisode.ended_at.is_(None), MonitoringEpisode.ended_at > window_start))).all()
    for code, start, end, mx, lim in eps:
        if code is None:
            continue
        a, b = max(start, window_start), min(end or now, now)
        h = max(0.0, (b - a).total_seconds() / 3600)
        sev = 1.0 if not lim or mx is None or lim <= 0 else min(max(mx / lim, 1.0), SEVERITY_CAP)
        hours[code] += h
        weighted[code] += h * sev
    lcol = getattr(Lead, col)
    open_leads: dict[str | None, int] = dict(session.execute(
        select(lcol, func.count(Lead.id)).where(Lead.status.in_(list(LEAD_OPEN_STATES))).group_by(lcol)).all())
    parts = []
    for j in areas:
        n = int(point_counts.get(j.code, 0))
        a_j = weighted.get(j.code, 0.0) / max(1, n)
        ol = int(open_leads.get(j.code, 0))
        b_j = ol / j.area_km2 * 10_000 if j.area_km2 > 0 else 0.0
        parts.append((j, n, a_j, ol, b_j))
    max_a = max((p[2] for p in parts), default=0.0)
    max_b = max((p[4] for p in parts), default=0.0)
    scored = []
    for j, n, a_j, ol, b_j in parts:
        idx = 100 * (WEIGHT_EXCEEDANCE * (a_j / max_a if max_a > 0 else 0.0)
                     + WEIGHT_LEADS * (b_j / max_b if max_b > 0 else 0.0))
        scored.append((j, n, a_j, ol, b_j, idx))
    scored.sort(key=lambda s: (-s[5], s[0].code))
    return [RankRow(rank=i + 1, code=j.code, name=j.name, index=round(idx, 2),
                    exceedance_hours=round(hours.get(j.code, 0.0), 3), weighted_hours_per_point=round(a_j, 3),
                    points=n, open_leads=ol, open_leads_per_10k_km2=round(b_j, 3), area_km2=round(j.area_km2, 3))
            for i, (j, n, a_j, ol, b_j, idx) in enumerate(scored)]


# ================================================================================ sink


def store_items(factory: sessionmaker[Session], items: Sequence[IngestItem], *, now: datetime) -> IngestResult:
    """:func:`store_batch` in its own unit of work (committed on return).

    :class:`DbSink` calls it per batch and, when a batch fails, once per item, so one
    poisonous packet does not cost the others of its batch.
    """
    with unit_of_work(factory) as session:
        return store_batch(session, items, now=now)


class DbSink:
    """The HJ 212 receiver's storage: batches packets and writes them from a worker thread.

    ``accept`` and ``quarantine`` return once their batch is committed, so the receiver's
    9014 answer means "stored". A batch is written when ``batch_size`` items are waiting or
    when the oldest waiting item has waited ``max_delay`` seconds, whichever comes first, and
    only one batch is written at a time: while one is being committed the next one fills up.
    Items that queued during a write have already waited, so under load the next write starts
    at once and takes everything waiting: the batch size adapts to the load (group commit), the
    number of transactions per second stays small however many devices send, and the fixed cost
    of a transaction is shared by more packets the busier the receiver is. The database work
    runs in ``asyncio.to_thread``: the event loop keeps serving connections meanwhile.

    Parameters
    ----------
    sessions
        Session factory of the database.
    batch_size
        Items per transaction at most.
    max_delay
        Seconds an item may wait for its batch to fill.
    missing_after
        When set, every ``missing_every`` seconds run :func:`check_missing` with this silence.
    clock
        Returns "now" (tests pass a fixed clock).
    """

    def __init__(self, sessions: sessionmaker[Session], *, batch_size: int = 2000, max_delay: float = 0.05,
                 missing_after: timedelta | None = None, missing_every: float = 60.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        if batch_size < 1:
            raise Invalid("batch_size", batch_size, "at least 1")
        if max_delay < 0:
            raise Invalid("max_delay", max_delay, "0 or more seconds")
        self.sessions = sessions
        self.batch_size = batch_size
        self.max_delay = max_delay
        self.missing_after = missing_after
        self.missing_every = missing_every
        self.clock = clock
        self.totals = IngestResult()
        self.batches = 0
        self.busy_seconds = 0.0  # wall time spent writing batches
        self.busy_cpu_seconds = 0.0  # CPU time of the writing thread meanwhile
        # (item, its future, loop time of its arrival), in arrival order.
        self._pending: list[tuple[IngestItem, asyncio.Future[None], float]] = []
        self._wake: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._missing_task: asyncio.Task[None] | None = None
        self._closing = False

    async def __aenter__(self) -> DbSink:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Start the writer (and the data-missing check) on the running loop."""
        if self._task is None:
            self._wake, self._full = asyncio.Event(), asyncio.Event()
            self._task = asyncio.create_task(self._writer(), name="hj212-db-writer")
            if self.missing_after is not None:
                self._missing_task = asyncio.create_task(self._missing_loop(), name="hj212-missing")

    async def accept(self, packet: Packet, received_at: datetime, peer: str) -> None:
        """Queue an accepted packet; returns when it is committed."""
        await self._submit(Accepted(packet, received_at, peer))

    async def quarantine(self, raw: bytes, reason: str, received_at: datetime, peer: str) -> None:
        """Queue rejected bytes; returns when they are committed."""
        await self._submit(Dropped(raw, reason, received_at, peer))

    async def _submit(self, item: IngestItem) -> None:
        if self._closing:
            raise RuntimeError("the monitoring sink is closed")
        self.start()
        assert self._wake is not None and self._full is not None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.append((item, fut, loop.time()))
        self._wake.set()
        if len(self._pending) >= self.batch_size:
            self._full.set()
        await fut

    def _take(self) -> list[tuple[IngestItem, asyncio.Future[None], float]]:
        batch, self._pending = self._pending[:self.batch_size], self._pending[self.batch_size:]
        return batch

    async def _writer(self) -> None:
        assert self._wake is not None and self._full is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if self._pending and len(self._pending) < self.batch_size and not self._closing:
                # Counted from the oldest item's arrival, not from now: see the class docstring.
                left = self._pending[0][2] + self.max_delay - loop.time()
                if left > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(left):
                            await self._full.wait()
            batch = self._take()
            if not self._pending:
                self._wake.clear()
            if len(self._pending) < self.batch_size:
                self._full.clear()
            if batch:
                await self._write(batch)

    async def _write(self, batch: list[tuple[IngestItem, asyncio.Future[None], float]]) -> None:
        items = [it for it, _, _ in batch]
        started = time.perf_counter()
        try:
            result = await asyncio.to_thread(self._store_timed, items)
        except Exception:
            log.exception("monitoring batch of %d failed; retrying item by item", len(items))
            result = IngestResult()
            for it, fut, _ in batch:
                try:
                    result.add(await asyncio.to_thread(store_items, self.sessions, [it], now=self.clock()))
                except Exception as exc:
                    if not fut.done():
                        fut.set_exception(exc)
        self.totals.add(result)
        self.batches += 1
        self.busy_seconds += time.perf_counter() - started
        for _, fut, _ in batch:
            if not fut.done():
                fut.set_result(None)

    def _store_timed(self, items: list[IngestItem]) -> IngestResult:
        started = time.thread_time()
        try:
            return store_items(self.sessions, items, now=self.clock())
        finally:
            self.busy_cpu_seconds += time.thread_time() - started

    async def _missing_loop(self) -> None:
        assert self.missing_after is not None
        while True:
            await asyncio.sleep(self.missing_every)
            try:
                await asyncio.to_thread(self._check_missing_once)
            except Exception:
                log.exception("data-missing check failed")

    def _check_missing_once(self) -> list[int]:
        assert self.missing_after is not None
        with unit_of_work(self.sessions) as session:
            return check_missing(session, now=self.clock(), silence=self.missing_after)

    async def flush(self) -> None:
        """Write everything queued so far."""
        while self._pending:
            await self._write(self._take())

    async def close(self) -> None:
        """Write what is queued and stop the background tasks."""
        self._closing = True
        for task in (self._task, self._missing_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._missing_task = None
        await self.flush()


@dataclass
class CollectingSink:
    """Collects what the receiver hands over, for callers that store it in one go (HTTP)."""

    items: list[IngestItem] = field(default_factory=list)

    async def accept(self, packet: Packet, received_at: datetime, peer: str) -> None:
        """Keep the packet."""
        self.items.append(Accepted(packet, received_at, peer))

    async def quarantine(self, raw: bytes, reason: str, received_at: datetime, peer: str) -> None:
        """Keep the rejected bytes."""
        self.items.append(Dropped(raw, reason, received_at, peer))


def stored_counts(session: Session) -> dict[str, int]:
    """Row counts of readings, quarantine, episodes and links (for benchmarks and checks)."""
    return {
        "readings": int(session.scalar(select(func.count(MonitoringReading.id))) or 0),
        "quarantine": int(session.scalar(select(func.count(MonitoringQuarantine.id))) or 0),
        "episodes": int(session.scalar(select(func.count(MonitoringEpisode.id))) or 0),
        "links": int(session.scalar(select(func.count()).select_from(MonitoringLink)) or 0),
        "jurisdictions": int(session.scalar(select(func.count(Jurisdiction.id))) or 0),
    }


__all__ = [
    "KINDS",
    "Accepted",
    "CollectingSink",
    "DbSink",
    "Dropped",
    "IngestResult",
    "PointIn",
    "RankRow",
    "check_missing",
    "get_point",
    "import_points",
    "latest_readings",
    "list_episodes",
    "list_points",
    "list_quarantine",
    "point_scope_clause",
    "ranking",
    "reading_history",
    "reassign_points",
    "store_batch",
    "store_items",
    "upsert_points",
    "validate_point",
]
