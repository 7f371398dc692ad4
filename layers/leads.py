"""Lead intake, dispatch and retrieval.

Intake is set-based: a whole batch is validated, converted to storage lon/lat, assigned to
jurisdictions with one vectorised call, routed, and written with multi-row inserts together with
one dispatch record and one audit event per lead, all in the caller's unit of work. Intake is
idempotent on (channel, external_id): a lead seen before is reported, never stored twice.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from sqlalchemy import Select, String, and_, bindparam, func, select, true
from sqlalchemy.dialects.postgresql import ARRAY as PG_ARRAY
from sqlalchemy.orm import Session

from geo import crs as gcrs
from geo.assign import BoundaryIndex, Method
from geo.assign import assign as assign_points
from layers import audit
from layers.db import bulk_insert, reserve_ids
from layers.errors import Invalid, NotFound
from layers.models import AssignMethod, Category, Dispatch, Lead
from layers.routing import Router
from layers.shapes import point_ewkt, to_shape
from layers.users import Principal, lead_scope_clause


class Channel(StrEnum):
    """Where a lead came from."""

    hotline_12345 = "12345"
    hotline_12369 = "12369"
    city_management = "city_management"
    wechat = "wechat"
    enforcement_app = "enforcement_app"
    higher_level = "higher_level"
    petition = "petition"
    monitoring = "monitoring"
    open311 = "open311"
    other = "other"


URGENCIES = ("normal", "urgent", "emergency")
LEAD_TABLE = Lead.metadata.tables["leads"]
DISPATCH_TABLE = Dispatch.metadata.tables["dispatches"]
MAX_DESCRIPTION = 4000
OPEN_STATES = ("received", "dispatched", "signed", "in_progress", "rectified", "verified",
               "feedback", "return_visit", "returned")


@dataclass(frozen=True)
class LeadIn:
    """A validated lead, ready for intake."""

    channel: str
    external_id: str
    category: str
    reported_at: datetime
    description: str = ""
    address: str = ""
    lon: float | None = None
    lat: float | None = None
    datum: str = "wgs84"
    urgency: str | None = None
    complainant_name: str | None = None
    complainant_phone: str | None = None
    public: bool = False


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _float(name: str, v: Any) -> float | None:
    if _blank(v):
        return None
    try:
        out = float(v)
    except (TypeError, ValueError):
        raise Invalid(name, v, "a decimal number") from None
    if not math.isfinite(out):
        raise Invalid(name, v, "a finite number")
    return out


def _datetime(name: str, v: Any, tz: str = "Asia/Shanghai") -> datetime:
    if isinstance(v, datetime):
        dt = v
    elif _blank(v):
        raise Invalid(name, v, "an ISO 8601 date-time such as 2026-05-01T08:30:00+08:00")
    else:
        text_value = str(v).strip()
        try:
            dt = datetime.fromisoformat(text_value)  # the common case, ~20× faster than pandas
        except ValueError:
            try:
                dt = pd.Timestamp(text_value).to_pydatetime()
                if pd.isna(dt):  # "NaT", "nat": pandas' missing value is not a time
                    raise ValueError(text_value)
            except (ValueError, TypeError):
                raise Invalid(name, v, "an ISO 8601 date-time such as 2026-05-01T08:30:00+08:00") from None
    if dt.tzinfo is None:
        # Local reports carry local time: Beijing time is the documented default.
        dt = dt.replace(tzinfo=ZoneInfo(tz))
    return dt.astimezone(UTC)


def validate_lead(raw: Mapping[str, Any], *, channel: str | None = None, datum: str | None = None,
                  category: str | None = None, categories: AbstractSet[str] | None = None,
                  now: datetime | None = None, tz: str = "Asia/Shanghai") -> LeadIn:
    """Check one raw lead (from CSV, Excel or JSON) and return a :class:`LeadIn`.

    Parameters
    ----------
    raw
        Field → value; targets ``external_id, channel, category, reported_at, description,
        address, lon, lat, datum, urgency, complainant_name, complainant_phone, public``.
    channel, datum, category
        Defaults for rows that do not carry their own.
    tz
        Time zone of date-times written without an offset (Beijing time by default).
    categories
        Known category codes (checked when given).
    now
        Reports dated more than a day after ``now`` are refused.

    Returns
    -------
    LeadIn

    Raises
    ------
    layers.errors.Invalid
        Naming the field, the value and what is allowed.
    """
    ch = raw.get("channel") if not _blank(raw.get("channel")) else channel
    allowed_channels = [c.value for c in Channel]
    if ch is None or str(ch) not in allowed_channels:
        raise Invalid("channel", ch, f"one of {', '.join(allowed_channels)}")
    ext = raw.get("external_id")
    if _blank(ext):
        raise Invalid("external_id", ext, "a non-empty id, unique within its channel")
    ext = str(ext).strip()
    if isinstance(raw.get("external_id"), float) and float(raw["external_id"]).is_integer():
        ext = str(int(raw["external_id"]))
    if len(ext) > 120:
        raise Invalid("external_id", ext, "at most 120 characters")
    cat = raw.get("category") if not _blank(raw.get("category")) else category
    if _blank(cat):
        raise Invalid("category", cat, "a category code (see GET /categories)")
    cat = str(cat).strip()
    if categories is not None and cat not in categories:
        raise Invalid("category", cat, "a category code (see GET /categories)")
    desc = "" if _blank(raw.get("description")) else str(raw["description"])
    if len(desc) > MAX_DESCRIPTION:
        raise Invalid("description", desc[:40] + "…", f"at most {MAX_DESCRIPTION} characters")
    addr = "" if _blank(raw.get("address")) else str(raw["address"]).strip()
    if len(addr) > 500:
        raise Invalid("address", addr[:40] + "…", "at most 500 characters")
    lon, lat = _float("lon", raw.get("lon")), _float("lat", raw.get("lat"))
    if (lon is None) != (lat is None):
        raise Invalid("lon" if lon is None else "lat", None, "both lon and lat, or neither")
    d = raw.get("datum") if not _blank(raw.get("datum")) else (datum or "wgs84")
    try:
        d = gcrs.parse_datum(str(d)).value
    except ValueError as exc:
        raise Invalid("datum", d, str(exc)) from None
    if lon is not None and lat is not None:
        if not -180 <= lon <= 180:
            raise Invalid("lon", lon, "a longitude between -180 and 180")
        if not -90 <= lat <= 90:
            raise Invalid("lat", lat, "a latitude between -90 and 90")
    if lon is None and not addr:
        raise Invalid("lon/lat", None, "a point (lon, lat) or an address")
    reported = _datetime("reported_at", raw.get("reported_at"), tz)
    if now is not None and (reported - now).total_seconds() > 86400:
        raise Invalid("reported_at", reported.isoformat(), "a time not in the future")
    urg = raw.get("urgency")
    if not _blank(urg) and str(urg) not in URGENCIES:
        raise Invalid("urgency", urg, f"one of {', '.join(URGENCIES)}")
    pub = raw.get("public")
    public = str(pub).strip().lower() in ("1", "true", "yes", "y") if not _blank(pub) else False
    return LeadIn(
        channel=str(ch), external_id=ext, category=cat, reported_at=reported, description=desc,
        address=addr, lon=lon, lat=lat, datum=d, urgency=None if _blank(urg) else str(urg),
        complainant_name=None if _blank(raw.get("complainant_name")) else str(raw["complainant_name"])[:120],
        complainant_phone=None if _blank(raw.get("complainant_phone")) else str(raw["complainant_phone"])[:40],
        public=public,
    )


@dataclass
class Outcome:
    """What intake did with one input lead."""

    position: int
    created: bool
    lead_id: int
    code: str
    assignment: dict[str, Any] = field(default_factory=dict)


def _new_code(reported: datetime) -> str:
    return f"L{reported:%Y%m%d}-{secrets.token_hex(4).upper()}"


@dataclass
class Geocoder:
    """Resolves an address to administrative codes when a lead has no point (optional)."""

    resolve: Any = None  # callable(address) -> dict(codes, precision, confidence) | None


def intake(
    session: Session,
    items: Sequence[LeadIn],
    *,
    actor: str,
    now: datetime,
    index: BoundaryIndex | None,
    router: Router,
    tolerance_m: float = 200.0,
    near_border_m: float = 50.0,
    geocoder: Geocoder | None = None,
) -> list[Outcome]:
    """Store new leads, assigned and routed; report existing ones unchanged.

    Parameters
    ----------
    session
        Unit of work: leads, dispatch records and audit events commit together.
    items
        Validated leads (see :func:`validate_lead`).
    actor, now
        Who submits, and the receipt time.
    index
        The active boundary index (``None``: every lead goes to the dispatcher's queue).
    router
        The routing rules in force.
    tolerance_m, near_border_m
        Assignment tolerances (see :func:`geo.assign.assign`).
    geocoder
        Address resolver for leads without a point.

    Returns
    -------
    list of Outcome
        One per input, in input order.
    """
    if not items:
        return []
    keys = [(it.channel, it.external_id) for it in items]
    existing: dict[tuple[str, str], tuple[int, str]] = {}
    for hit in _rows_by_key(session, keys, Lead.code):
        existing[(hit.channel, hit.external_id)] = (hit.id, hit.code)

    fresh: list[int] = []
    seen: set[tuple[str, str]] = set()
    for i, k in enumerate(keys):
        if k not in existing and k not in seen:
            fresh.append(i)
            seen.add(k)
    new = [items[i] for i in fresh]
    assignments = _assign(new, index, tolerance_m, near_border_m, geocoder)
    urgency_of = router.urgency or {code: urg for code, urg in session.execute(select(Category.code, Category.urgency))}
    version_id = int(index.version) if index is not None else None

    rows: list[dict[str, Any]] = []
    for it, a in zip(new, assignments, strict=True):  # one dict per new lead, for a multi-row insert
        route = router.route(it.category, a["city_code"], a["county_code"], a["township_code"])
        a["body_code"] = route.body_code
        a["routing_rule_id"] = route.rule_id
        a["routing_reason"] = route.reason
        a["routing_fallback"] = route.fallback
        located = a["method"] != AssignMethod.unassigned.value
        review_reasons = [r for r in (a.get("review_reason"), route.reason if route.fallback else None) if r]
        rows.append({
            "code": _new_code(it.reported_at),
            "channel": it.channel, "external_id": it.external_id, "category_code": it.category,
            "urgency": it.urgency or urgency_of.get(it.category, "normal"),
            "description": it.description, "address": it.address,
            "complainant_name": it.complainant_name, "complainant_phone": it.complainant_phone,
            "public": it.public, "reported_at": it.reported_at, "received_at": now,
            "orig_lon": it.lon, "orig_lat": it.lat,
            "orig_datum": it.datum if it.lon is not None else None,
            "geom": point_ewkt(a["lon"], a["lat"]) if a["lon"] is not None else None,
            "geocode_precision": a["precision"], "geocode_confidence": a["confidence"],
            "city_code": a["city_code"], "county_code": a["county_code"],
            "township_code": a["township_code"], "body_code": route.body_code,
            "boundary_version_id": version_id if located else None,
            "routing_rule_id": route.rule_id, "assign_method": a["method"],
            "assign_reason": a["reason"], "assign_distance_m": a["distance_m"],
            "assign_candidates": a["candidates"],
            "review": bool(a["review"] or route.fallback),
            "review_reason": "; ".join(review_reasons),
            "routing_fallback": route.fallback,
            "status": "dispatched" if located else "received",
            "created_at": now, "updated_at": now, "row_version": 1,
        })

    # PostgreSQL: ids drawn from the sequence first, then one COPY. SQLite: plain executemany, then
    # the ids read back by key (RETURNING with a guaranteed row order makes SQLAlchemy fall back to
    # one INSERT per row there).
    reserved = reserve_ids(session, LEAD_TABLE, len(rows))
    if reserved is not None:
        for row, lead_id in zip(rows, reserved, strict=True):
            row["id"] = lead_id
        bulk_insert(session, LEAD_TABLE, rows)
        ids = reserved
    else:
        bulk_insert(session, LEAD_TABLE, rows)
        id_of: dict[tuple[str, str], int] = {}
        new_keys = [(r["channel"], r["external_id"]) for r in rows]
        for got in _rows_by_key(session, new_keys):
            id_of[(got.channel, got.external_id)] = int(got.id)
        ids = [id_of[k] for k in new_keys]
    dispatch_rows = []
    events = []
    for lead_id, stored in zip(ids, rows, strict=True):
        dispatch_rows.append({
            "lead_id": lead_id, "at": now, "actor": actor, "trigger": "intake",
            "boundary_version_id": stored["boundary_version_id"], "routing_rule_id": stored["routing_rule_id"],
            "city_code": stored["city_code"], "county_code": stored["county_code"],
            "township_code": stored["township_code"], "body_code": stored["body_code"],
            "method": stored["assign_method"], "reason": stored["assign_reason"],
        })
        events.append(audit.EventIn(
            at=now, actor=actor, action="lead.intake", entity="lead", entity_id=str(lead_id), before={},
            after={k: stored[k] for k in ("code", "channel", "external_id", "category_code", "township_code",
                                        "county_code", "body_code", "assign_method", "status")},
        ))
    bulk_insert(session, DISPATCH_TABLE, dispatch_rows)
    from layers.workflow import service as workflow  # local: the workflow imports this module

    # Duplicates and rebounds are looked for before the cases open: opening them updates the KPI
    # rollup rows every concurrent intake updates too, and those row locks last until the commit.
    flags = workflow.duplicates.find_at_intake(session, ids)
    workflow.open_cases(session, ids, now=now)  # node clocks and due times, same unit of work
    workflow.duplicates.store_at_intake(session, flags, now=now, actor=actor)
    # Last, so the audit head (one row every writer serialises on) is held only until the commit.
    audit.record(session, events)

    created = {fresh[j]: (ids[j], rows[j], assignments[j]) for j in range(len(fresh))}
    by_key = {(rows[j]["channel"], rows[j]["external_id"]): (ids[j], rows[j]["code"]) for j in range(len(fresh))}
    out: list[Outcome] = []
    for i, k in enumerate(keys):
        if i in created:
            lid, stored, a = created[i]
            out.append(Outcome(i, True, lid, str(stored["code"]), _public_assignment(stored, a)))
        else:
            lid, code = existing.get(k) or by_key[k]
            out.append(Outcome(i, False, lid, code, {}))
    return out


def _rows_by_key(session: Session, keys: Sequence[tuple[str, str]], *extra: Any) -> Iterator[Any]:
    """Lead rows for (channel, external_id) keys, 1,000 ids per query on the unique index.

    One channel per query. PostgreSQL plans a row-value ``(channel, external_id) IN (...)`` list
    as a scan, which made re-imports crawl; and ``channel = c AND external_id IN (...)`` is
    planned from the channel's row estimate: for a channel that grew since the last ANALYZE
    (every new source does) it walks all of that channel's index entries and filters them
    (12 ms per intake batch at 10,000 leads of the channel, growing with it). So PostgreSQL
    looks each key up on its own — a LATERAL probe per key, kept from being flattened into a
    join by ``LIMIT 1`` (the key is unique) — whose plan is an index lookup on both columns
    whatever the statistics say.
    """
    by_channel: dict[str, list[str]] = {}
    for ch, ext in set(keys):
        by_channel.setdefault(ch, []).append(ext)
    pg = session.get_bind().dialect.name == "postgresql"
    stmt = _key_template(pg, tuple(extra))
    conn = session.connection()
    for ch, exts in by_channel.items():
        exts.sort()
        for start in range(0, len(exts), 1000):
            yield from conn.execute(stmt, {"k_channel": ch, "k_exts": exts[start:start + 1000]})


def _key_stmt(pg: bool, channel: str, exts: list[str], *extra: Any) -> Select[Any]:
    """The key lookup with its values bound (for EXPLAIN in tests)."""
    return _key_template(pg, tuple(extra)).params(k_channel=channel, k_exts=exts)


@lru_cache(maxsize=8)
def _key_template(pg: bool, extra: tuple[Any, ...]) -> Select[Any]:
    """Built once per shape: every intake batch runs it, and building it cost more than running it."""
    channel = bindparam("k_channel", type_=String)
    if not pg:
        return (select(Lead.channel, Lead.external_id, Lead.id, *extra)
                .where(Lead.channel == channel, Lead.external_id.in_(bindparam("k_exts", expanding=True))))
    k = func.unnest(bindparam("k_exts", type_=PG_ARRAY(String))).table_valued("ext").render_derived(name="k")
    probe = (select(Lead.channel, Lead.external_id, Lead.id, *extra)
             .where(Lead.channel == channel, Lead.external_id == k.c.ext).limit(1).lateral("x"))
    return select(*probe.c).select_from(k).join(probe, true())


def _public_assignment(row: Mapping[str, Any], a: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "city_code": row["city_code"], "county_code": row["county_code"],
        "township_code": row["township_code"], "body_code": row["body_code"],
        "method": row["assign_method"], "reason": row["assign_reason"],
        "distance_m": row["assign_distance_m"], "candidates": row["assign_candidates"],
        "review": row["review"], "review_reason": row["review_reason"],
        "boundary_version_id": row["boundary_version_id"], "routing_rule_id": row["routing_rule_id"],
        "routing_reason": a.get("routing_reason"),
    }


def _none_if_nan(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def _review_reason(near_border: bool, method: str) -> str | None:
    if method == Method.unassigned.value:
        return "outside service area"
    return "near a border: check the candidates" if near_border else None


def _assign(items: Sequence[LeadIn], index: BoundaryIndex | None, tolerance_m: float,
            near_border_m: float, geocoder: Geocoder | None) -> list[dict[str, Any]]:
    n = len(items)
    out: list[dict[str, Any]] = [
        {"lon": None, "lat": None, "city_code": None, "county_code": None, "township_code": None,
         "method": AssignMethod.unassigned.value, "reason": "no boundary layer is active",
         "distance_m": None, "candidates": [], "review": True, "review_reason": None,
         "precision": None, "confidence": None}
        for _ in range(n)
    ]
    with_point = [i for i, it in enumerate(items) if it.lon is not None]
    if with_point:
        lon = np.array([items[i].lon for i in with_point], dtype=float)
        lat = np.array([items[i].lat for i in with_point], dtype=float)
        datums = np.array([items[i].datum for i in with_point])
        slon, slat = lon.copy(), lat.copy()
        for d in set(datums.tolist()):
            m = datums == d
            slon[m], slat[m] = gcrs.to_storage(lon[m], lat[m], d)
        for j, i in enumerate(with_point):
            out[i].update(lon=float(slon[j]), lat=float(slat[j]), precision="point", confidence=1.0)
        if index is not None:
            res = assign_points(index, slon, slat, tolerance_m=tolerance_m, near_border_m=near_border_m)
            # Column lists, not DataFrame rows: .iloc per row costs more than the assignment itself.
            cols = {c: res[c].tolist() for c in ("city_code", "county_code", "township_code", "method",
                                                 "reason", "distance_m", "candidates", "review")}
            for j, i in enumerate(with_point):
                method = str(cols["method"][j])
                near = bool(cols["review"][j])
                dist = cols["distance_m"][j]
                cands = cols["candidates"][j]
                out[i].update(
                    city_code=_none_if_nan(cols["city_code"][j]), county_code=_none_if_nan(cols["county_code"][j]),
                    township_code=_none_if_nan(cols["township_code"][j]), method=method,
                    reason=str(cols["reason"][j]),
                    distance_m=None if dist is None else _none_if_nan(float(dist)),
                    candidates=list(cands) if cands is not None else [],
                    review=near or method == Method.unassigned.value,
                    review_reason=_review_reason(near, method),
                )
    if geocoder is not None and geocoder.resolve is not None and index is not None:
        for i, it in enumerate(items):
            if not it.address:
                continue
            g = geocoder.resolve(it.address)
            if g is None:
                continue
            if it.lon is None:
                codes = g["codes"]
                if codes.get("county") or codes.get("township"):
                    out[i].update(
                        city_code=codes.get("city"), county_code=codes.get("county"),
                        township_code=codes.get("township"), method=AssignMethod.by_address.value,
                        reason=f"by address at {g['precision']} precision (confidence {g['confidence']:.2f})",
                        precision=g["precision"], confidence=g["confidence"], review=g["confidence"] < 0.6,
                        review_reason="low geocoding confidence" if g["confidence"] < 0.6 else None,
                    )
                    if g.get("lon") is not None:
                        out[i].update(lon=g["lon"], lat=g["lat"])
            else:
                conflict = g.get("conflict_with")
                if conflict is not None:
                    reason = conflict(out[i]["township_code"], out[i]["county_code"])
                    if reason:
                        out[i].update(review=True, review_reason=f"conflict: {reason}")
    elif index is not None:
        for i, it in enumerate(items):
            if it.lon is None:
                out[i].update(reason="address only and no geocoder configured")
    return out


# ----------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class LeadFilter:
    """Filters shared by list, export and maps."""

    status: Sequence[str] = ()
    body: Sequence[str] = ()
    category: Sequence[str] = ()
    channel: Sequence[str] = ()
    jurisdiction: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    review: bool | None = None


def _filtered(stmt: Select[Any], p: Principal, f: LeadFilter) -> Select[Any]:
    conds = [lead_scope_clause(p)]
    if f.status:
        conds.append(Lead.status.in_(list(f.status)))
    if f.body:
        conds.append(Lead.body_code.in_(list(f.body)))
    if f.category:
        conds.append(Lead.category_code.in_(list(f.category)))
    if f.channel:
        conds.append(Lead.channel.in_(list(f.channel)))
    if f.jurisdiction:
        j = f.jurisdiction
        conds.append((Lead.city_code == j) | (Lead.county_code == j) | (Lead.township_code == j))
    if f.since is not None:
        conds.append(Lead.reported_at >= f.since)
    if f.until is not None:
        conds.append(Lead.reported_at < f.until)
    if f.review is not None:
        conds.append(Lead.review.is_(f.review))
    return stmt.where(and_(*conds))


COUNT_CAP = 10_000
"""A list's total is counted exactly up to this many leads, then reported as "at least"."""


#: A lead as the API publishes it, one labelled column per field (list pages read these rows
#: directly: loading 50 ORM objects and their geometry cost more than the query).
PUBLIC_COLUMNS = (
    Lead.id, Lead.code, Lead.channel, Lead.external_id, Lead.category_code.label("category"), Lead.urgency,
    Lead.status, Lead.description, Lead.address, Lead.reported_at, Lead.received_at,
    func.ST_X(Lead.geom).label("lon"), func.ST_Y(Lead.geom).label("lat"),
    Lead.orig_lon, Lead.orig_lat, Lead.orig_datum, Lead.city_code, Lead.county_code, Lead.township_code,
    Lead.body_code, Lead.assign_method.label("method"), Lead.assign_reason.label("reason"),
    Lead.assign_distance_m.label("distance_m"), Lead.assign_candidates.label("candidates"), Lead.review,
    Lead.review_reason, Lead.boundary_version_id, Lead.routing_rule_id, Lead.due_at,
)


def list_leads(session: Session, p: Principal, f: LeadFilter, *, page: int = 1, page_size: int = 100,
               count_cap: int | None = COUNT_CAP) -> tuple[int, bool, list[dict[str, Any]]]:
    """Leads visible to ``p`` matching ``f``, newest first, with their count.

    Each lead is a dict of :data:`PUBLIC_COLUMNS` (storage lon/lat). Counting every lead of a
    city-wide scope on each page view costs a scan of the whole table; the count stops at
    ``count_cap`` instead (exact statistics come from the KPI and export endpoints).

    Parameters
    ----------
    session
        Any session (read only).
    p
        The caller; their scope is applied inside the query.
    f
        Filters.
    page, page_size
        Which page, newest first.
    count_cap
        Count at most this many matches (``None``: count them all).

    Returns
    -------
    tuple
        ``(total, exact, rows)``: ``exact`` is False when there are more than ``count_cap``
        leads, and ``total`` is then ``count_cap`` (a lower bound).
    """
    total, exact = _count(session, p, f, count_cap)
    result = session.connection().execute(
        _filtered(select(*PUBLIC_COLUMNS), p, f).order_by(Lead.reported_at.desc(), Lead.id.desc())
        .offset((page - 1) * page_size).limit(page_size))
    rows = [dict(r) for r in result.mappings().all()]
    for r in rows:
        r["candidates"] = r["candidates"] or []
    return total, exact, rows


def _count(session: Session, p: Principal, f: LeadFilter, count_cap: int | None) -> tuple[int, bool]:
    if count_cap is None:
        return int(session.scalar(_filtered(select(func.count(Lead.id)), p, f)) or 0), True
    capped = _filtered(select(Lead.id), p, f).limit(count_cap + 1).subquery()
    n = int(session.scalar(select(func.count()).select_from(capped)) or 0)
    return min(n, count_cap), n <= count_cap


def get_lead(session: Session, p: Principal, ref: str) -> Lead:
    """One lead by code or numeric id; :class:`NotFound` when absent *or* out of scope."""
    cond = Lead.code == ref
    if ref.isascii() and ref.isdigit() and int(ref) <= 2_147_483_647:  # 32-bit ids; "²" is a digit too
        cond = cond | (Lead.id == int(ref))
    lead = session.scalar(select(Lead).where(cond, lead_scope_clause(p)))
    if lead is None:
        raise NotFound(f"no lead {ref!r}", field="lead")
    return lead


def dispatch_history(session: Session, lead_id: int) -> list[Dispatch]:
    """Every assignment the lead has had, oldest first."""
    return list(session.scalars(select(Dispatch).where(Dispatch.lead_id == lead_id).order_by(Dispatch.id)))


EXPORT_COLUMNS = ["code", "external_id", "channel", "category", "status", "reported_at", "lon", "lat",
                  "city_code", "county_code", "township_code", "body", "method", "reason",
                  "review", "due_at"]


def lead_record(lead: Lead) -> dict[str, Any]:
    """A flat dict of a lead for exports (storage lon/lat)."""
    pt = to_shape(lead.geom)
    return {
        "code": lead.code, "external_id": lead.external_id, "channel": lead.channel,
        "category": lead.category_code, "status": lead.status,
        "reported_at": lead.reported_at.isoformat(),
        "lon": None if pt is None else round(pt.x, 7), "lat": None if pt is None else round(pt.y, 7),
        "city_code": lead.city_code, "county_code": lead.county_code,
        "township_code": lead.township_code, "body": lead.body_code,
        "method": lead.assign_method, "reason": lead.assign_reason, "review": lead.review,
        "due_at": lead.due_at.isoformat() if lead.due_at else None,
    }


def iter_export(session: Session, p: Principal, f: LeadFilter, batch: int = 5000) -> Iterator[dict[str, Any]]:
    """Stream every visible lead matching ``f`` in id order, ``batch`` rows per query."""
    last = 0
    while True:
        rows = session.scalars(
            _filtered(select(Lead), p, f).where(Lead.id > last).order_by(Lead.id).limit(batch)
        ).all()
        if not rows:
            return
        for lead in rows:
            yield lead_record(lead)
        last = rows[-1].id
        session.expunge_all()


def submit(session: Session, items: Sequence[LeadIn], *, actor: str, now: datetime,
           tolerance_m: float = 200.0, near_border_m: float = 50.0) -> list[Outcome]:
    """:func:`intake` against the active boundary version and the routing rules in force."""
    from layers.geocoder import resolver_for
    from layers.jurisdictions import INDEX_CACHE

    index = INDEX_CACHE.get(session, for_write=True)
    needs_address = any(it.address for it in items)
    resolver = resolver_for(session) if index is not None and needs_address else None
    return intake(session, items, actor=actor, now=now, index=index, router=Router.current(session),
                  tolerance_m=tolerance_m, near_border_m=near_border_m,
                  geocoder=Geocoder(resolver) if resolver is not None else None)
