"""Cases near me, for field staff on a phone."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field
from pydantic_core import to_json

from api.deps import PrincipalDep, ReadSessionDep
from api.schemas import DatumName
from geo import crs as gcrs
from layers import nearby as nearby_store

router = APIRouter(prefix="/leads", tags=["leads"])


class Navigation(BaseModel):
    geo_uri: str = Field(description="RFC 5870 geo: URI (WGS84); opens the phone's map app")
    url: str = Field(description="a plain web map link (OpenStreetMap), no vendor SDK needed")
    lon: float = Field(description="the lead's longitude in the datum of the request")
    lat: float
    datum: DatumName


class NearbyItem(BaseModel):
    id: int
    code: str
    category: str
    status: str
    urgency: str
    address: str
    body_code: str | None
    county_code: str | None
    township_code: str | None
    lon: float = Field(description="storage (WGS84) longitude")
    lat: float
    distance_m: float = Field(description="geodesic distance from the query point, metres")
    due_at: datetime | None = Field(description="next deadline")
    navigation: Navigation


class NearbyPage(BaseModel):
    lon: float = Field(description="query point in storage (WGS84) degrees")
    lat: float
    radius_m: float | None
    sort: Literal["distance", "deadline"]
    items: list[NearbyItem]


def _items(hits: list[nearby_store.NearbyHit], datum: DatumName) -> list[dict[str, Any]]:
    """Response items as plain dicts in the documented shape (:class:`NearbyItem`).

    The query already typed every value; building models only to serialise them again cost
    more than the database spent finding the leads.
    """
    if not hits:
        return []
    dx, dy = gcrs.from_storage(np.array([h.lon for h in hits]), np.array([h.lat for h in hits]), datum)
    out = []
    for h, x, y in zip(hits, np.round(dx, 7).tolist(), np.round(dy, 7).tolist(), strict=True):
        la, lo = f"{h.lat:.6f}", f"{h.lon:.6f}"
        out.append({
            "id": h.id, "code": h.code, "category": h.category, "status": h.status, "urgency": h.urgency,
            "address": h.address, "body_code": h.body_code, "county_code": h.county_code,
            "township_code": h.township_code, "lon": h.lon, "lat": h.lat, "distance_m": h.distance_m,
            "due_at": h.due_at,
            "navigation": {"geo_uri": f"geo:{la},{lo}",
                           "url": f"https://www.openstreetmap.org/?mlat={la}&mlon={lo}#map=18/{la}/{lo}",
                           "lon": x, "lat": y, "datum": datum},
        })
    return out


@router.get("/nearby", response_model=NearbyPage)
def nearby(
    session: ReadSessionDep, p: PrincipalDep,
    lon: Annotated[float, Query(ge=-180, le=180, description="your longitude")],
    lat: Annotated[float, Query(ge=-90, le=90, description="your latitude")],
    datum: DatumName = "wgs84",
    radius_m: Annotated[float | None, Query(gt=0, le=nearby_store.MAX_RADIUS_M)] = None,
    status: Annotated[list[str], Query(max_length=20)] = [],  # noqa: B006 - FastAPI reads the default
    limit: Annotated[int, Query(ge=1, le=nearby_store.MAX_LIMIT)] = 50,
    sort: Literal["distance", "deadline"] = "distance",
) -> Response:
    """Leads in your scope around you by real distance, with deadline and navigation link."""
    hits = nearby_store.nearby(session, p, lon, lat, datum=datum, radius_m=radius_m, status=status,
                               limit=limit, sort=sort)
    x, y = gcrs.to_storage(lon, lat, datum)
    page = {"lon": float(x), "lat": float(y), "radius_m": radius_m, "sort": sort, "items": _items(hits, datum)}
    # Serialised once by pydantic's own serialiser (the schema above still documents the shape;
    # the API tests hold the answer to it): a field user's phone polls this.
    return Response(to_json(page), media_type="application/json")
