"""Lead intake and reading."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request, Response
from pydantic_core import to_json

from api.deps import PrincipalDep, ReadSessionDep, SessionDep, SettingsDep, require
from api.schemas import DispatchPublic, LeadCreate, LeadCreated, LeadPage, LeadPublic
from layers import leads, routing
from layers.db import unit_of_work
from layers.errors import Forbidden
from layers.models import Lead
from layers.shapes import to_shape
from layers.users import Principal

router = APIRouter(prefix="/leads", tags=["leads"])
INTAKE_ROLES = ("dispatcher", "field")


def lead_public(lead: Lead) -> LeadPublic:
    pt = to_shape(lead.geom)
    return LeadPublic(
        id=lead.id, code=lead.code, channel=lead.channel, external_id=lead.external_id,
        category=lead.category_code, urgency=lead.urgency, status=lead.status,
        description=lead.description, address=lead.address, reported_at=lead.reported_at,
        received_at=lead.received_at, lon=None if pt is None else pt.x, lat=None if pt is None else pt.y,
        orig_lon=lead.orig_lon, orig_lat=lead.orig_lat, orig_datum=lead.orig_datum,
        city_code=lead.city_code, county_code=lead.county_code, township_code=lead.township_code,
        body_code=lead.body_code, method=lead.assign_method, reason=lead.assign_reason,
        distance_m=lead.assign_distance_m, candidates=lead.assign_candidates or [],
        review=lead.review, review_reason=lead.review_reason,
        boundary_version_id=lead.boundary_version_id, routing_rule_id=lead.routing_rule_id,
        due_at=lead.due_at,
    )


@router.post("", response_model=LeadCreated, status_code=201)
async def create_lead(body: LeadCreate, request: Request,
                      p: Annotated[Principal, require(*INTAKE_ROLES)]) -> LeadCreated:
    """Take in one lead; idempotent on channel + external id; returns the assignment and why."""
    if p.citywide or p.has("dispatcher"):
        # Group commit with the other intakes in flight: the request waits for its batch in the
        # event loop, holding no thread, no connection and no database turn.
        out = await request.app.state.batcher.intake(body.model_dump(), actor=p.username)
    else:
        out = await anyio.to_thread.run_sync(_intake_in_scope, request, body, p)
    return LeadCreated(code=out.code, id=out.lead_id, created=out.created, assignment=out.assignment or None)


def _intake_in_scope(request: Request, body: LeadCreate, p: Principal) -> leads.Outcome:
    """A scoped field user's lead, alone in one unit of work (one thread hop, start to commit)."""
    now = datetime.now(UTC)
    with unit_of_work(request.app.state.sessions) as session:
        cats = routing.Router.current(session).categories
        item = leads.validate_lead(body.model_dump(), categories=cats, now=now)
        out: leads.Outcome = request.app.state.intake(session, [item], actor=p.username, now=now)[0]
        # A scoped field user may only file leads that land in their scope; raising rolls back.
        if out.created:
            a = out.assignment
            codes = {a.get("city_code"), a.get("county_code"), a.get("township_code")}
            if not (p.scope_codes & codes) and a.get("body_code") not in p.scope_bodies:
                raise Forbidden("the lead's location is outside your scope; ask a dispatcher to file it")
    return out


@router.get("", response_model=LeadPage)
def list_leads(
    session: ReadSessionDep, settings: SettingsDep, p: PrincipalDep,
    status: Annotated[list[str], Query(max_length=20)] = [],  # noqa: B006 - FastAPI reads the default
    body: Annotated[list[str], Query(max_length=20)] = [],  # noqa: B006
    category: Annotated[list[str], Query(max_length=40)] = [],  # noqa: B006
    channel: Annotated[list[str], Query(max_length=20)] = [],  # noqa: B006
    jurisdiction: Annotated[str | None, Query(max_length=20)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    review: bool | None = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Leads in your scope, newest first, filtered and paginated."""
    f = leads.LeadFilter(status=status, body=body, category=category, channel=channel,
                         jurisdiction=jurisdiction, since=_aware(since), until=_aware(until),
                         review=review)
    total, exact, rows = leads.list_leads(session, p, f, page=page,
                                          page_size=min(page_size, settings.max_page_size))
    # The rows already have LeadPublic's fields and types (the schema above documents them; the
    # API tests hold each item equal to GET /leads/{code}): serialised once, not re-validated.
    answer = {"total": total, "total_exact": exact, "page": page, "page_size": page_size, "items": rows}
    return Response(to_json(answer), media_type="application/json")


@router.get("/{ref}", response_model=LeadPublic)
def get_lead(ref: str, session: ReadSessionDep, p: PrincipalDep) -> LeadPublic:
    """One lead by code or id (404 when it does not exist or is outside your scope)."""
    return lead_public(leads.get_lead(session, p, ref))


@router.get("/{ref}/dispatches", response_model=list[DispatchPublic])
def get_dispatches(ref: str, session: SessionDep, p: PrincipalDep) -> list[Any]:
    """Every assignment the lead has had, oldest first."""
    lead = leads.get_lead(session, p, ref)
    return [DispatchPublic.model_validate(d, from_attributes=True) for d in leads.dispatch_history(session, lead.id)]


def _aware(dt: datetime | None) -> datetime | None:
    if dt is None or dt.tzinfo is not None:
        return dt
    from zoneinfo import ZoneInfo

    return dt.replace(tzinfo=ZoneInfo("Asia/Shanghai"))
