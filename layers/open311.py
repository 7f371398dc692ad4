"""Open311 GeoReport v2 over leadgrid: services are categories, service requests are leads.

Field mapping (GeoReport v2 → leadgrid):

========================  ==============================================================
service_code / name       category code / name (``description`` = English name)
service_request_id        lead code
status                    ``closed`` when the lead is closed or merged, else ``open``
status_notes              the lead's last *public* note: the ``public_note`` of its latest
                          workflow step that carried one (text approved for publication; the
                          internal ``note`` and complainant data never appear), or an event
                          whose ``after`` carries ``"public": true``
agency_responsible        the responsible body's name
expected_datetime         the lead's current deadline (``due_at``)
requested_datetime        ``reported_at``; ``updated_datetime`` = ``updated_at``
address / lat / long      the lead's address and storage (WGS84) point
========================  ==============================================================

Requests made here go through :func:`layers.leads.submit` with channel ``open311``, like every
other lead. The default window of GET requests is the spec's: the 90 days up to ``end_date``
(or now), at most 1,000 records.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from layers import leads as lead_store
from layers import routing
from layers.disclosure import CLOSED_STATES
from layers.errors import Invalid, NotFound
from layers.models import AuditEvent, Body, Category, Lead
from layers.users import Principal, lead_scope_clause

WINDOW = timedelta(days=90)
MAX_RECORDS = 1000
STATUSES = ("open", "closed")


def services(session: Session) -> list[dict[str, Any]]:
    """Every active category as a GeoReport service (no attributes, so ``metadata`` false)."""
    return [
        {"service_code": c.code, "service_name": c.name, "description": c.name_en or c.name,
         "metadata": False, "type": "realtime", "keywords": c.group, "group": c.group}
        for c in routing.list_categories(session) if c.active
    ]


def service_definition(session: Session, code: str) -> dict[str, Any]:
    """The service definition of ``code``: leadgrid's services have no extra attributes."""
    cat = session.scalar(select(Category).where(Category.code == code, Category.active.is_(True)))
    if cat is None:
        raise NotFound(f"no service {code!r}; see services.json", field="service_code")
    return {"service_code": cat.code, "attributes": []}


@dataclass(frozen=True)
class RequestIn:
    """A POSTed service request, already type-checked by the API."""

    service_code: str
    lat: float | None = None
    long: float | None = None
    address_string: str = ""
    description: str = ""
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    device_id: str | None = None
    account_id: str | None = None
    media_url: str | None = None


Intake = Callable[..., Sequence[lead_store.Outcome]]


def submit_request(session: Session, req: RequestIn, *, actor: str, now: datetime,
                   intake: Intake) -> lead_store.Outcome:
    """File a service request as a lead through the common intake.

    Parameters
    ----------
    session
        The request's unit of work.
    req
        The request; ``lat``/``long`` are WGS84 as the spec says, or give ``address_string``.
    actor, now
        Who files it (the API key's user) and the receipt time.
    intake
        The app's intake function (``layers.leads.submit`` with the configured tolerances).

    Returns
    -------
    layers.leads.Outcome
    """
    if (req.lat is None) != (req.long is None):
        raise Invalid("lat" if req.lat is None else "long", None, "both lat and long, or neither")
    if req.lat is None and not req.address_string.strip():
        raise Invalid("lat/long", None, "lat and long, or address_string")
    name = " ".join(x for x in (req.first_name, req.last_name) if x) or None
    raw = {
        "channel": lead_store.Channel.open311.value,
        # GeoReport has no client-side id; a random one keeps every POST a separate request.
        "external_id": f"{actor}-{secrets.token_hex(8)}",
        "category": req.service_code, "reported_at": now, "description": req.description,
        "address": req.address_string, "lon": req.long, "lat": req.lat, "datum": "wgs84",
        "complainant_name": name, "complainant_phone": req.phone,
    }
    item = lead_store.validate_lead(raw, categories=routing.Router.current(session).categories, now=now)
    return intake(session, [item], actor=actor, now=now)[0]


def _public_notes(session: Session, lead_ids: Sequence[int]) -> dict[int, str]:
    notes: dict[int, str] = {}
    for start in range(0, len(lead_ids), 1000):
        chunk = [str(i) for i in lead_ids[start:start + 1000]]
        rows = session.execute(
            select(AuditEvent.entity_id, AuditEvent.after, AuditEvent.reason)
            .where(AuditEvent.entity == "lead", AuditEvent.entity_id.in_(chunk))
            .order_by(AuditEvent.seq)
        ).all()
        for entity_id, after, reason in rows:  # oldest first: the last public one wins
            if not isinstance(after, Mapping):
                continue
            payload = after.get("payload")
            approved = payload.get("public_note") if isinstance(payload, Mapping) else None
            if approved:  # a workflow step with text approved for publication
                notes[int(entity_id)] = str(approved)
            elif after.get("public") is True:
                notes[int(entity_id)] = str(after.get("public_note") or reason or "")
    return notes


def _record(lead: Lead, x: float | None, y: float | None, body_name: str | None,
            category_name: str, note: str | None) -> dict[str, Any]:
    return {
        "service_request_id": lead.code,
        "status": "closed" if lead.status in CLOSED_STATES else "open",
        "status_notes": note,
        "service_name": category_name,
        "service_code": lead.category_code,
        "description": lead.description,
        "agency_responsible": body_name,
        "service_notice": None,
        "requested_datetime": lead.reported_at,
        "updated_datetime": lead.updated_at,
        "expected_datetime": lead.due_at,
        "address": lead.address or None,
        "address_id": None,
        "zipcode": None,
        "lat": y,
        "long": x,
        "media_url": None,
    }


@dataclass(frozen=True)
class RequestQuery:
    """Filters of GET requests (all optional)."""

    service_request_id: Sequence[str] = ()
    service_code: Sequence[str] = ()
    start_date: datetime | None = None
    end_date: datetime | None = None
    status: Sequence[str] = ()
    page: int = 1
    page_size: int = MAX_RECORDS


def find_requests(session: Session, p: Principal, q: RequestQuery, *, now: datetime) -> list[dict[str, Any]]:
    """Service requests visible to ``p``, newest first.

    Without ``service_request_id`` the spec's window applies: ``start_date`` defaults to 90 days
    before ``end_date`` (itself defaulting to ``now``), and a window wider than 90 days is
    refused. At most ``page_size`` (≤ 1,000) records per page.

    Raises
    ------
    layers.errors.Invalid
        For an unknown status, a reversed or too-wide window, or a bad page size.
    """
    for s in q.status:
        if s not in STATUSES:
            raise Invalid("status", s, "open or closed (comma-separated)")
    if not 1 <= q.page_size <= MAX_RECORDS:
        raise Invalid("page_size", q.page_size, f"an integer in [1, {MAX_RECORDS}]")
    conds: list[Any] = [lead_scope_clause(p)]
    if q.service_request_id:
        conds.append(Lead.code.in_(list(q.service_request_id)))
    else:
        end = q.end_date or now
        start = q.start_date or (end - WINDOW)
        if start > end:
            raise Invalid("start_date", start.isoformat(), "a time before end_date")
        if end - start > WINDOW:
            raise Invalid("end_date", end.isoformat(), "at most 90 days after start_date")
        conds += [Lead.reported_at >= start, Lead.reported_at <= end]
    if q.service_code:
        conds.append(Lead.category_code.in_(list(q.service_code)))
    if q.status and set(q.status) != set(STATUSES):
        closed = Lead.status.in_(CLOSED_STATES)
        conds.append(closed if q.status[0] == "closed" else ~closed)
    rows = session.execute(
        select(Lead, func.ST_X(Lead.geom), func.ST_Y(Lead.geom), Body.name, Category.name)
        .join(Category, Category.code == Lead.category_code)
        .outerjoin(Body, Body.code == Lead.body_code)
        .where(and_(*conds)).order_by(Lead.reported_at.desc(), Lead.id.desc())
        .offset((q.page - 1) * q.page_size).limit(q.page_size)
    ).all()
    notes = _public_notes(session, [r[0].id for r in rows])
    return [_record(lead, x, y, body, cat, notes.get(lead.id)) for lead, x, y, body, cat in rows]


def get_request(session: Session, p: Principal, code: str) -> dict[str, Any]:
    """One service request by id; :class:`NotFound` when absent or outside ``p``'s scope."""
    hits = find_requests(session, p, RequestQuery(service_request_id=[code], page_size=1),
                         now=datetime.max)
    if not hits:
        raise NotFound(f"no service request {code!r}", field="service_request_id")
    return hits[0]
