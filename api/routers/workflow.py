"""The case workflow over HTTP: actions, trail, KPIs, oversight, calendar and escalation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, UploadFile
from pydantic import BaseModel, Field

from api.deps import PrincipalDep, SessionDep, require
from layers.errors import Invalid
from layers.users import Principal
from layers.workflow import duplicates, service
from layers.workflow.calendar import NoticeError, parse_holiday_notice

router = APIRouter(tags=["workflow"])
OVERSEERS = ("inspector", "leader")


class ActionIn(BaseModel):
    """An action's payload fields and, optionally, the version the client saw."""

    payload: dict[str, Any] = Field(default_factory=dict)
    version: int | None = Field(default=None, ge=0, description="expected row_version")


def _aware(v: datetime | None) -> datetime | None:
    return v if v is None or v.tzinfo else v.replace(tzinfo=UTC)


@router.post("/leads/{ref}/actions/{action}")
def post_action(ref: str, action: str, session: SessionDep, p: PrincipalDep,
                body: Annotated[ActionIn | None, Body()] = None) -> dict[str, Any]:
    """Apply one workflow action (sign, return, rectify, …); 409 carries the current state."""
    body = body or ActionIn()
    out = service.transition(session, p, ref, action, body.payload, datetime.now(UTC),
                             expected_version=body.version)
    return {"lead": out.code, "action": out.action, "role": out.role,
            "state_before": out.state_before, "state": out.state_after,
            "version": out.version, "due_at": out.due_at,
            "clocks": [{k: v for k, v in c.items() if k != "clock_id"} for c in out.clocks]}


@router.get("/leads/{ref}/actions")
def get_actions(ref: str, session: SessionDep, p: PrincipalDep) -> dict[str, Any]:
    """The actions you could take on this lead now."""
    return service.allowed_actions(session, p, ref)


@router.get("/leads/{ref}/trail")
def get_trail(ref: str, session: SessionDep, p: PrincipalDep) -> dict[str, Any]:
    """The lead's audit events and node clocks."""
    return service.trail(session, p, ref)


class DismissIn(BaseModel):
    """Why a duplicate proposal is wrong."""

    reason: str = Field(default="", max_length=4000)


@router.get("/leads/{ref}/links")
def get_links(ref: str, session: SessionDep, p: PrincipalDep) -> dict[str, Any]:
    """Duplicate proposal, rebound link, rebounds counted against it, merged children."""
    return duplicates.lead_links(session, p, ref)


@router.post("/leads/{ref}/duplicate/dismiss")
def post_dismiss_duplicate(ref: str, session: SessionDep,
                           p: Annotated[Principal, require("dispatcher", "admin")],
                           body: Annotated[DismissIn | None, Body()] = None) -> dict[str, Any]:
    """Reject the duplicate proposal of a lead (confirm one with the ``merge`` action)."""
    return duplicates.dismiss_duplicate(session, p, ref, now=datetime.now(UTC),
                                        reason=(body or DismissIn()).reason)


@router.get("/queue")
def get_queue(
    session: SessionDep,
    p: Annotated[Principal, require("dispatcher", "admin", "leader")],
    kind: Literal["unrouted", "returned", "duplicates", "feedback_owed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict[str, Any]:
    """The dispatcher's queue: unrouted, returned, proposed duplicates, merged leads owed feedback."""
    return duplicates.dispatcher_queue(session, p, kind=kind, limit=limit)


@router.get("/kpi")
def get_kpi(
    session: SessionDep,
    p: Annotated[Principal, require(*OVERSEERS, "dispatcher")],
    by: Literal["body", "county", "township"] = "body",
    since: datetime | None = None,
    until: datetime | None = None,
    node_times: bool = False,
) -> dict[str, Any]:
    """KPIs per body / county / township in your scope, with rankings."""
    now = datetime.now(UTC)
    out = service.kpis(session, p, by=by, now=now, since=_aware(since), until=_aware(until))
    if node_times:
        out["node_hours"] = service.node_hours(session, p, by=by, since=_aware(since),
                                               until=_aware(until))
    return out


@router.get("/oversight/{kind}")
def get_oversight(
    kind: str,
    session: SessionDep,
    p: Annotated[Principal, require(*OVERSEERS)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict[str, Any]:
    """再监督 lists: overdue, returned, closed_too_fast, rebounds, dissatisfied, extensions,
    feedback_owed."""
    return service.oversight(session, p, kind, now=datetime.now(UTC), limit=limit)


@router.get("/notices")
def get_notices(session: SessionDep, p: PrincipalDep, kind: str | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, Any]]:
    """Warnings, urgings, supervision and re-dispatch notices in your scope."""
    return service.notices(session, p, kind=kind, limit=limit)


@router.post("/calendar/import")
async def calendar_import(
    file: UploadFile,
    session: SessionDep,
    p: Annotated[Principal, require("admin")],
) -> dict[str, Any]:
    """Load a year's State Council holiday notice (CSV or JSON) and recompute deadlines."""
    raw = (await file.read()).decode("utf-8-sig")
    fmt = "json" if (file.filename or "").lower().endswith(".json") else "csv"
    try:
        records = parse_holiday_notice(raw, fmt=fmt)
    except NoticeError as exc:
        raise Invalid("file", file.filename, "; ".join(exc.problems)) from None
    res = service.import_calendar(session, records, actor=p.username, now=datetime.now(UTC),
                                  source=file.filename or "")
    return {"year": res.year, "days": res.days, "recomputed": res.recomputed,
            "still_provisional": res.still_provisional}


@router.get("/calendar/{year}")
def calendar_show(year: Annotated[int, Path(ge=1900, le=2200)], session: SessionDep,
                  p: PrincipalDep) -> list[dict[str, Any]]:
    """Holidays and swapped working days stored for ``year``."""
    return service.calendar_days(session, year)


@router.post("/escalate")
def post_escalate(session: SessionDep,
                  p: Annotated[Principal, require("admin")]) -> dict[str, int]:
    """Run one escalation pass now (the server also runs them periodically)."""
    r = service.escalate(session, datetime.now(UTC), actor=p.username)
    return {"yellow": r.yellow, "red": r.red, "urged": r.urged, "supervised": r.supervised}


async def escalation_loop(app: Any, interval_s: int) -> None:
    """Run an escalation pass every ``interval_s`` seconds until cancelled (``serve`` only).

    Each pass is its own unit of work in a worker thread; a failing pass is logged and the loop
    goes on (passes are idempotent, so the next one catches up).
    """
    import asyncio
    import logging

    from layers.db import unit_of_work

    log = logging.getLogger("leadgrid.escalation")

    def one_pass() -> service.EscalationReport:
        with unit_of_work(app.state.sessions) as session:
            return service.escalate(session, datetime.now(UTC))

    while True:
        try:
            r = await asyncio.to_thread(one_pass)
            if r != service.EscalationReport():
                log.info("escalation: %s", r)
        except Exception:
            log.exception("escalation pass failed")
        await asyncio.sleep(interval_s)
