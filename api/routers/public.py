"""Public disclosure (信息公开): no token, rate-limited, no personal data, coarse locations."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from api.deps import SessionDep
from api.limits import TokenBucket
from layers import disclosure

router = APIRouter(prefix="/public", tags=["public"])


async def _settings(request: Request) -> disclosure.DisclosureSettings:
    return _disclosure(request)


def _disclosure(request: Request) -> disclosure.DisclosureSettings:
    state = request.app.state
    if getattr(state, "disclosure", None) is None:
        state.disclosure = disclosure.DisclosureSettings()
    return state.disclosure


async def rate_limit(request: Request) -> None:
    """One token per request from the client's IP; 429 with Retry-After when the bucket is empty."""
    state = request.app.state
    cfg = _disclosure(request)
    if getattr(state, "public_bucket", None) is None:
        state.public_bucket = TokenBucket(cfg.rate_per_minute / 60.0, cfg.burst)
    wait = state.public_bucket.take(request.client.host if request.client else "?")
    if wait > 0:
        raise HTTPException(429, f"too many requests; retry after {int(wait) + 1} s",
                            headers={"Retry-After": str(int(wait) + 1)})


def _aware(dt: datetime | None) -> datetime | None:
    # Naive times are Beijing time, as everywhere else in the API.
    return dt if dt is None or dt.tzinfo else dt.replace(tzinfo=ZoneInfo("Asia/Shanghai"))


DisclosureDep = Annotated[disclosure.DisclosureSettings, Depends(_settings)]
Limited = Depends(rate_limit)


class PublicLeadOut(BaseModel):
    code: str
    category: str
    category_name: str
    status: str
    closed: bool
    reported_at: datetime
    description: str = Field(description="published because the lead was approved for publication")
    county_code: str | None
    township_code: str | None
    body_code: str | None
    body_name: str | None
    lon: float | None = Field(description="coarsened: grid cell centre or township point, WGS84")
    lat: float | None


class PublicLeadPage(BaseModel):
    total: int
    page: int
    page_size: int
    coarsening: str = Field(description="how locations were coarsened, e.g. 'grid 100 m'")
    items: list[PublicLeadOut]


class CountRow(BaseModel):
    code: str
    name: str
    total: int
    open: int
    closed: int
    public: int


class PublicStats(BaseModel):
    counties: list[CountRow]
    townships: list[CountRow]
    bodies: list[CountRow]


@router.get("/leads", response_model=PublicLeadPage, dependencies=[Limited])
def public_leads(
    session: SessionDep, cfg: DisclosureDep,
    category: Annotated[str | None, Query(max_length=40)] = None,
    jurisdiction: Annotated[str | None, Query(max_length=20)] = None,
    since: datetime | None = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> PublicLeadPage:
    """Leads approved for publication: no complainant, coarsened location."""
    total, items = disclosure.public_leads(session, cfg, category=category, jurisdiction=jurisdiction,
                                           since=_aware(since),
                                           page=page, page_size=page_size)
    how = f"grid {cfg.grid_m:g} m" if cfg.coarsen == "grid" else "township"
    out: list[Any] = [PublicLeadOut(**vars(i)) for i in items]
    return PublicLeadPage(total=total, page=page, page_size=page_size, coarsening=how, items=out)


@router.get("/stats", response_model=PublicStats, dependencies=[Limited])
def public_stats(session: SessionDep) -> PublicStats:
    """Lead counts per county, township and responsible body."""
    return PublicStats.model_validate(disclosure.public_stats(session))
