"""Exports of leads and KPIs (CSV, GeoJSON, Excel), filtered like GET /leads, scoped, streamed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from api.deps import PrincipalDep
from layers import exports, leads
from layers.db import unit_of_work
from layers.users import Principal

router = APIRouter(prefix="/exports", tags=["exports"])

MEDIA = {
    "csv": "text/csv; charset=utf-8",
    "geojson": "application/geo+json",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
_FILE_DOC: dict[int | str, dict[str, Any]] = {
    200: {"description": "the file, streamed",
          "content": {
              "text/csv": {"schema": {"type": "string"}},
              "application/geo+json": {"schema": {
                  "type": "object", "required": ["type", "features"],
                  "properties": {"type": {"const": "FeatureCollection"}, "features": {"type": "array"}}}},
              MEDIA["xlsx"]: {"schema": {"type": "string", "format": "binary"}},
          }}
}


def _filter(status: list[str], body: list[str], category: list[str], channel: list[str],
            jurisdiction: str | None, since: datetime | None, until: datetime | None,
            review: bool | None) -> leads.LeadFilter:
    return leads.LeadFilter(status=status, body=body, category=category, channel=channel,
                            jurisdiction=jurisdiction, since=_aware(since), until=_aware(until), review=review)


def _aware(dt: datetime | None) -> datetime | None:
    if dt is None or dt.tzinfo is not None:
        return dt
    from zoneinfo import ZoneInfo

    return dt.replace(tzinfo=ZoneInfo("Asia/Shanghai"))


def _records(request: Request, p: Principal, f: leads.LeadFilter, page: int | None,
             page_size: int | None) -> Iterator[dict[str, Any]]:
    # The stream outlives the route, so it opens its own read-only unit of work.
    with unit_of_work(request.app.state.sessions) as session:
        yield from exports.paged(leads.iter_export(session, p, f), page, page_size)


Status = Annotated[list[str], Query(max_length=20)]
Codes = Annotated[list[str], Query(max_length=40)]


@router.get("/leads.{fmt}", response_class=StreamingResponse, responses=_FILE_DOC)
def export_leads(
    fmt: Literal["csv", "geojson", "xlsx"], request: Request, p: PrincipalDep,
    status: Status = [],  # noqa: B006 - FastAPI reads the default
    body: Status = [],  # noqa: B006
    category: Codes = [],  # noqa: B006
    channel: Status = [],  # noqa: B006
    jurisdiction: Annotated[str | None, Query(max_length=20)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    review: bool | None = None,
    page: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
    page_size: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> StreamingResponse:
    """Leads in your scope as CSV, GeoJSON or Excel (all matches, or one page)."""
    f = _filter(status, body, category, channel, jurisdiction, since, until, review)
    page_size = page_size or (10_000 if page else None)
    recs = _records(request, p, f, page, page_size)
    if fmt == "csv":
        chunks = exports.csv_chunks(recs, exports.EXPORT_COLUMNS)
    elif fmt == "geojson":
        chunks = exports.geojson_chunks(recs)
    else:
        chunks = exports.xlsx_chunks(recs, exports.EXPORT_COLUMNS)
    name = f"leads-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.{fmt}"
    return StreamingResponse(chunks, media_type=MEDIA[fmt],
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/kpi.csv", response_class=StreamingResponse,
            responses={200: {"description": "the table", "content": {"text/csv": {"schema": {"type": "string"}}}}})
def export_kpi(
    request: Request, p: PrincipalDep,
    status: Status = [],  # noqa: B006
    body: Status = [],  # noqa: B006
    category: Codes = [],  # noqa: B006
    channel: Status = [],  # noqa: B006
    jurisdiction: Annotated[str | None, Query(max_length=20)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> StreamingResponse:
    """Lead counts per county and body: total, open, closed, open overdue, closed on time."""
    f = _filter(status, body, category, channel, jurisdiction, since, until, None)
    with unit_of_work(request.app.state.sessions) as session:
        rows = exports.kpi_rows(session, p, f, now=datetime.now(UTC))
    return StreamingResponse(exports.csv_chunks(rows, exports.KPI_COLUMNS), media_type=MEDIA["csv"],
                             headers={"Content-Disposition": 'attachment; filename="kpi.csv"'})
