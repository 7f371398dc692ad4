"""Open311 GeoReport v2 (JSON and XML), so existing 311 apps and tools can file and follow leads.

The API key is a leadgrid bearer token, sent as ``Authorization: Bearer …`` or as the spec's
``api_key`` parameter (query or form). Errors use the spec's shape: a list of
``{"code", "description"}`` (``<errors><error>…`` in XML).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel

from api.auth import Principals
from api.deps import SessionDep, bearer
from api.errors import status_for
from layers import open311
from layers.db import Session
from layers.errors import DomainError, Forbidden, Unauthorized
from layers.leads import MAX_DESCRIPTION
from layers.users import Principal

router = APIRouter(prefix="/open311/v2", tags=["open311"])
Fmt = Literal["json", "xml"]
INTAKE_ROLES = ("dispatcher", "field")
XML = "text/xml; charset=utf-8"


class Service(BaseModel):
    service_code: str
    service_name: str
    description: str
    metadata: bool
    type: Literal["realtime", "batch", "blackbox"]
    keywords: str
    group: str


class ServiceDefinition(BaseModel):
    service_code: str
    attributes: list[dict[str, Any]]


class RequestCreated(BaseModel):
    service_request_id: str
    service_notice: str | None = None
    account_id: str | None = None


class ServiceRequest(BaseModel):
    service_request_id: str
    status: Literal["open", "closed"]
    status_notes: str | None
    service_name: str
    service_code: str
    description: str
    agency_responsible: str | None
    service_notice: str | None
    requested_datetime: datetime
    updated_datetime: datetime
    expected_datetime: datetime | None
    address: str | None
    address_id: str | None
    zipcode: str | None
    lat: float | None
    long: float | None
    media_url: str | None


class Open311Error(BaseModel):
    code: int
    description: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": list[Open311Error], "description": text} for code, text in (
        (400, "bad request"), (401, "missing or invalid api_key"), (403, "not allowed"),
        (404, "not found"))
}


def _docs(model: Any) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {"text/xml": {"schema": {"type": "string"}}},
                  "description": "JSON, or XML with the .xml suffix"}, **_ERRORS}


def _to_xml(value: Any, tag: str) -> ET.Element:
    el = ET.Element(tag)
    if isinstance(value, Mapping):
        for k, v in value.items():
            el.append(_to_xml(v, k))
    elif isinstance(value, list):
        child = tag[:-1] if tag.endswith("s") else "item"
        for v in value:
            el.append(_to_xml(v, child))
    elif isinstance(value, bool):
        el.text = "true" if value else "false"
    elif isinstance(value, datetime):
        el.text = value.isoformat()
    elif value is not None:
        el.text = str(value)
    return el


def _xml(root: str, item: str | None, data: Any, status: int = 200) -> Response:
    if item is None:
        el = _to_xml(data, root)
    else:
        el = ET.Element(root)
        for d in data:
            el.append(_to_xml(d, item))
    body = ET.tostring(el, encoding="utf-8", xml_declaration=True)
    return Response(body, status_code=status, media_type=XML)


def _respond(fmt: Fmt, root: str, item: str | None, data: Any, status: int = 200) -> Any:
    if fmt == "xml":
        return _xml(root, item, [d.model_dump() for d in data] if item else data.model_dump(), status)
    return data


T = TypeVar("T")


def _guard(fmt: Fmt, session: Session, fn: Callable[[], T]) -> T | Response:
    """Run ``fn``; a domain error rolls back and becomes the spec's error list (400 for invalid input)."""
    try:
        return fn()
    except DomainError as exc:
        session.rollback()  # the error is answered here, so the unit of work would otherwise commit
        code = status_for(exc)
        code = 400 if code == 422 else code
        errs = [Open311Error(code=code, description=exc.message)]
        if fmt == "xml":
            return _xml("errors", "error", [e.model_dump() for e in errs], code)
        from fastapi.responses import JSONResponse

        headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
        return JSONResponse([e.model_dump() for e in errs], status_code=code, headers=headers)


def _principal(request: Request, creds: HTTPAuthorizationCredentials | None, api_key: str | None) -> Principal:
    token = api_key or (creds.credentials if creds and creds.scheme.lower() == "bearer" else None)
    if not token:
        raise Unauthorized("missing api_key: pass a token from POST /auth/token as api_key or a bearer token")
    principals: Principals = request.app.state.principals
    return principals.resolve(token)  # routes run in the thread pool


def _split(values: Sequence[str]) -> list[str]:
    return [v.strip() for s in values for v in s.split(",") if v.strip()]


@router.get("/services.{fmt}", response_model=list[Service], responses=_docs(Service))
def services(fmt: Fmt, session: SessionDep) -> Any:
    """The services (lead categories) requests can be filed under."""
    return _guard(fmt, session, lambda: _respond(fmt, "services", "service",
                                        [Service(**s) for s in open311.services(session)]))


@router.get("/services/{service_code}.{fmt}", response_model=ServiceDefinition, responses=_docs(ServiceDefinition))
def service_definition(service_code: str, fmt: Fmt, session: SessionDep) -> Any:
    """The definition of one service (leadgrid's services have no extra attributes)."""
    return _guard(fmt, session, lambda: _respond(fmt, "service_definition", None,
                                        ServiceDefinition(**open311.service_definition(session, service_code))))


@router.post("/requests.{fmt}", response_model=list[RequestCreated], status_code=201,
             responses={201: {"content": {"text/xml": {"schema": {"type": "string"}}}}, **_ERRORS})
def post_request(
    fmt: Fmt, request: Request, session: SessionDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    service_code: Annotated[str, Form(min_length=1, max_length=40)],
    api_key: Annotated[str | None, Form(max_length=2000)] = None,
    lat: Annotated[float | None, Form(ge=-90, le=90)] = None,
    long: Annotated[float | None, Form(ge=-180, le=180)] = None,
    address_string: Annotated[str, Form(max_length=500)] = "",
    description: Annotated[str, Form(max_length=MAX_DESCRIPTION)] = "",
    email: Annotated[str | None, Form(max_length=200)] = None,
    first_name: Annotated[str | None, Form(max_length=60)] = None,
    last_name: Annotated[str | None, Form(max_length=60)] = None,
    phone: Annotated[str | None, Form(max_length=40)] = None,
    device_id: Annotated[str | None, Form(max_length=200)] = None,
    account_id: Annotated[str | None, Form(max_length=200)] = None,
    media_url: Annotated[str | None, Form(max_length=2000)] = None,
) -> Any:
    """File a service request; it goes through the same intake and assignment as every lead."""

    def run() -> Any:
        p = _principal(request, creds, api_key or request.query_params.get("api_key"))
        if not p.has(*INTAKE_ROLES):
            raise Forbidden(f"filing requests needs one of the roles {', '.join(INTAKE_ROLES)}")
        req = open311.RequestIn(service_code=service_code, lat=lat, long=long, address_string=address_string,
                                description=description, email=email, first_name=first_name,
                                last_name=last_name, phone=phone, device_id=device_id,
                                account_id=account_id, media_url=media_url)
        out = open311.submit_request(session, req, actor=p.username, now=datetime.now(UTC),
                                     intake=request.app.state.intake)
        a = out.assignment
        # Same rule as POST /leads: a scoped field user files only inside their scope (rolls back).
        if not p.citywide and not p.has("dispatcher"):
            codes = {a.get("city_code"), a.get("county_code"), a.get("township_code")}
            if not (p.scope_codes & codes) and a.get("body_code") not in p.scope_bodies:
                raise Forbidden("the location is outside your scope")
        created = [RequestCreated(service_request_id=out.code, account_id=account_id)]
        return _respond(fmt, "service_requests", "request", created, 201)

    return _guard(fmt, session, run)


@router.get("/requests.{fmt}", response_model=list[ServiceRequest], responses=_docs(ServiceRequest))
def get_requests(
    fmt: Fmt, request: Request, session: SessionDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    api_key: Annotated[str | None, Query(max_length=2000)] = None,
    service_request_id: Annotated[str | None, Query(max_length=4000, description="comma-separated ids")] = None,
    service_code: Annotated[str | None, Query(max_length=2000, description="comma-separated codes")] = None,
    start_date: datetime | None = None,
    end_date: datetime | None = None,
    status: Annotated[str | None, Query(max_length=20, description="open, closed or open,closed")] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=open311.MAX_RECORDS)] = open311.MAX_RECORDS,
) -> Any:
    """Service requests in your scope: the last 90 days and at most 1,000 per page by default."""

    def run() -> Any:
        p = _principal(request, creds, api_key)
        q = open311.RequestQuery(
            service_request_id=_split([service_request_id or ""]), service_code=_split([service_code or ""]),
            start_date=_utc(start_date), end_date=_utc(end_date), status=_split([status or ""]),
            page=page, page_size=page_size)
        rows = open311.find_requests(session, p, q, now=datetime.now(UTC))
        return _respond(fmt, "service_requests", "request", [ServiceRequest(**r) for r in rows])

    return _guard(fmt, session, run)


@router.get("/requests/{service_request_id}.{fmt}", response_model=list[ServiceRequest],
            responses=_docs(ServiceRequest))
def get_request(
    service_request_id: str, fmt: Fmt, request: Request, session: SessionDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    api_key: Annotated[str | None, Query(max_length=2000)] = None,
) -> Any:
    """One service request (a one-element list, as the spec says)."""

    def run() -> Any:
        p = _principal(request, creds, api_key)
        row = open311.get_request(session, p, service_request_id)
        return _respond(fmt, "service_requests", "request", [ServiceRequest(**row)])

    return _guard(fmt, session, run)


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        from zoneinfo import ZoneInfo

        dt = dt.replace(tzinfo=ZoneInfo("Asia/Shanghai"))
    return dt.astimezone(UTC)
