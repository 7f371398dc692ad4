"""Online monitoring: points, readings, quarantine, ranking, and HJ 212 over HTTP."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from api.deps import PrincipalDep, SessionDep, require
from api.hj212_server import handle_http_payload
from layers import monitoring
from layers.errors import Invalid
from layers.hj212 import Reassembler
from layers.models import MonitoringPoint
from layers.monitoring_store import MonitoringLink, MonitoringReading
from layers.shapes import to_shape
from layers.users import Principal

router = APIRouter(tags=["monitoring"])
MAX_HTTP_BODY = 1024 * 1024


class PointPublic(BaseModel):
    mn: str
    name: str
    enterprise: str
    kind: str
    lon: float
    lat: float
    orig_lon: float
    orig_lat: float
    orig_datum: str
    city_code: str | None
    county_code: str | None
    township_code: str | None
    body_code: str | None
    assign_method: str
    limits: dict[str, Any]
    active: bool
    last_received_at: datetime | None = None
    last_data_time: datetime | None = None
    clock_skew_s: float | None = None


class ReadingPublic(BaseModel):
    mn: str
    cn: str
    pollutant: str
    data_time: datetime
    value: float | None
    flag: str | None
    fields: dict[str, Any]
    received_at: datetime
    skew_s: float | None


class QuarantinePublic(BaseModel):
    id: int
    received_at: datetime
    peer: str
    kind: str
    reason: str
    mn: str | None
    size: int
    raw_text: str  # the bytes as latin-1, so every byte survives the JSON round trip
    raw_hex: str


class RankPublic(BaseModel):
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


class HJ212Result(BaseModel):
    replies: list[str]
    packets: int
    readings_new: int
    readings_duplicate: int
    quarantined: int


def point_public(p: MonitoringPoint, link: MonitoringLink | None) -> PointPublic:
    pt: Any = to_shape(p.geom)
    return PointPublic(
        mn=p.mn, name=p.name, enterprise=p.enterprise, kind=p.kind, lon=pt.x, lat=pt.y,
        orig_lon=p.orig_lon, orig_lat=p.orig_lat, orig_datum=p.orig_datum, city_code=p.city_code,
        county_code=p.county_code, township_code=p.township_code, body_code=p.body_code,
        assign_method=p.assign_method, limits=p.limits or {}, active=p.active,
        last_received_at=link.last_received_at if link else None,
        last_data_time=link.last_data_time if link else None,
        clock_skew_s=link.last_skew_s if link else None,
    )


def reading_public(r: MonitoringReading) -> ReadingPublic:
    return ReadingPublic(mn=r.mn, cn=r.cn, pollutant=r.pollutant, data_time=r.data_time, value=r.value,
                         flag=r.flag, fields=r.fields or {}, received_at=r.received_at, skew_s=r.skew_s)


@router.get("/monitoring/points", response_model=list[PointPublic])
def list_points(
    session: SessionDep, p: PrincipalDep,
    jurisdiction: Annotated[str | None, Query(max_length=20)] = None,
    body: Annotated[str | None, Query(max_length=40)] = None,
    kind: Annotated[Literal["outlet", "dust", "air_station"] | None, Query()] = None,
) -> list[PointPublic]:
    """Monitoring points in your scope, with when each was last heard."""
    return [point_public(pt, link) for pt, link in
            monitoring.list_points(session, p, jurisdiction=jurisdiction, body=body, kind=kind)]


@router.get("/monitoring/points/{mn}/latest", response_model=list[ReadingPublic])
def latest(mn: str, session: SessionDep, p: PrincipalDep) -> list[ReadingPublic]:
    """The newest reading of each pollutant of a point (404 when out of scope)."""
    return [reading_public(r) for r in monitoring.latest_readings(session, p, mn)]


@router.get("/monitoring/points/{mn}/readings", response_model=list[ReadingPublic])
def readings(
    mn: str, session: SessionDep, p: PrincipalDep,
    pollutant: Annotated[str | None, Query(max_length=40)] = None,
    cn: Annotated[str | None, Query(max_length=8)] = None,
    since: datetime | None = None, until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[ReadingPublic]:
    """Readings of a point, oldest first, by pollutant, data type (CN) and DataTime range."""
    return [reading_public(r) for r in monitoring.reading_history(
        session, p, mn, pollutant=pollutant, cn=cn, since=_aware(since), until=_aware(until), limit=limit)]


@router.get("/monitoring/quarantine", response_model=list[QuarantinePublic])
def quarantine(
    session: SessionDep, _: Annotated[Principal, require("admin")],
    kind: Annotated[str | None, Query(max_length=40)] = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[QuarantinePublic]:
    """Quarantined HJ 212 input, newest first, with the raw bytes (admin)."""
    return [QuarantinePublic(id=q.id, received_at=q.received_at, peer=q.peer, kind=q.kind, reason=q.reason,
                             mn=q.mn, size=q.size, raw_text=q.raw.decode("latin-1"), raw_hex=q.raw.hex())
            for q in monitoring.list_quarantine(session, kind=kind, since=_aware(since), limit=limit)]


@router.get("/monitoring/ranking", response_model=list[RankPublic])
def ranking(
    session: SessionDep, _: PrincipalDep,
    level: Annotated[Literal["county", "township"], Query()] = "county",
    days: Annotated[int, Query(ge=1, le=3660)] = 30,
) -> list[Any]:
    """Pollution index per jurisdiction, worst first (formula in ``layers.monitoring``)."""
    rows = monitoring.ranking(session, level=level, now=datetime.now(UTC), days=days)
    return [RankPublic.model_validate(r, from_attributes=True) for r in rows]


@router.post("/hj212", response_model=HJ212Result)
async def hj212(request: Request, _: Annotated[Principal, require("admin")]) -> HJ212Result:
    """Accept raw HJ 212 packets (same path as TCP); stored before the replies are returned."""
    body = await request.body()
    if len(body) > MAX_HTTP_BODY:
        raise Invalid("body", f"{len(body)} bytes", f"at most {MAX_HTTP_BODY} bytes of HJ 212 packets")
    state = request.app.state
    if getattr(state, "hj212_reassembler", None) is None:
        # Long-lived, so the parts of a split upload may arrive in separate requests.
        state.hj212_reassembler = Reassembler()
    sink = monitoring.CollectingSink()
    peer = f"http:{request.client.host if request.client else '?'}"
    replies = await handle_http_payload(body, sink, peer, reassembler=state.hj212_reassembler)
    res = await asyncio.to_thread(monitoring.store_items, state.sessions, sink.items, now=datetime.now(UTC))
    return HJ212Result(replies=[r.decode("utf-8", "replace") for r in replies], packets=res.packets,
                       readings_new=res.readings_new, readings_duplicate=res.readings_duplicate,
                       quarantined=res.quarantined)


def _aware(dt: datetime | None) -> datetime | None:
    if dt is None or dt.tzinfo is not None:
        return dt
    from zoneinfo import ZoneInfo

    return dt.replace(tzinfo=ZoneInfo("Asia/Shanghai"))
