"""Jurisdictions: point lookup, listing, boundary versions."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request

from api.deps import PrincipalDep, ReadSessionDep, SessionDep, SettingsDep
from api.schemas import BoundaryVersionPublic, DatumName, JurisdictionPublic, LookupPublic
from geo import crs as gcrs
from geo.assign import lookup as lookup_point
from layers import jurisdictions
from layers.errors import Conflict

router = APIRouter(tags=["jurisdictions"])


@router.get("/jurisdictions/lookup", response_model=LookupPublic)
def lookup(
    request: Request, session: ReadSessionDep, settings: SettingsDep, _: PrincipalDep,
    lon: Annotated[float, Query(ge=-180, le=180)],
    lat: Annotated[float, Query(ge=-90, le=90)],
    datum: DatumName = "wgs84",
) -> dict[str, Any]:
    """The city, county and township containing a point (MapIt-style), with the version."""
    index = jurisdictions.INDEX_CACHE.get(session, max_age=settings.index_recheck_seconds)
    if index is None:
        raise Conflict("no boundary layer is active; import and activate one first")
    x, y = gcrs.to_storage(np.array([lon]), np.array([lat]), datum)
    res = lookup_point(index, float(x[0]), float(y[0]), tolerance_m=settings.assign_tolerance_m,
                       near_border_m=settings.near_border_m)
    return {**res, "lon": float(x[0]), "lat": float(y[0])}


@router.get("/jurisdictions", response_model=list[JurisdictionPublic])
def list_jurisdictions(
    session: SessionDep, _: PrincipalDep,
    level: Annotated[str | None, Query(pattern="^(city|county|township)$")] = None,
    parent: Annotated[str | None, Query(max_length=20)] = None,
) -> list[Any]:
    """Jurisdictions of the active boundary version (no geometry)."""
    rows = jurisdictions.list_active(session, level=level, parent=parent)
    return [JurisdictionPublic.model_validate(j, from_attributes=True) for j in rows]


@router.get("/boundaries", response_model=list[BoundaryVersionPublic])
def list_versions(session: SessionDep, _: PrincipalDep) -> list[Any]:
    """Every boundary version: staged, active and retired."""
    rows = jurisdictions.list_versions(session)
    return [BoundaryVersionPublic.model_validate(v, from_attributes=True) for v in rows]
