"""Boundary layers for GIS staff: import, validation, preview, activation, rollback, history.

Changing routes need the ``gis`` role (admin always passes); every authenticated user may read
validation reports and history. Previews list lead codes only for gis/admin: others get counts.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile
from pydantic import BaseModel

from api.deps import PrincipalDep, SessionDep, SettingsDep, require
from api.schemas import DatumName
from layers import boundary_review, jurisdictions
from layers.errors import Invalid
from layers.users import Principal

router = APIRouter(prefix="/boundaries", tags=["boundaries"])
GisDep = Annotated[Principal, require("gis")]
MinArea = Annotated[float, Query(ge=0, le=1e9, description="overlap / gap threshold, m²")]


class ActivationPublic(BaseModel):
    active: str
    version: int
    previous: str | None
    leads_checked: int
    leads_moved: int
    monitoring_points_moved: int
    pairs: list[dict[str, Any]]


@router.post("/import")
def import_file(
    session: SessionDep, settings: SettingsDep, p: GisDep,
    file: Annotated[UploadFile, File(description="GeoJSON, zipped Shapefile or GeoPackage")],
    layer: Annotated[str, Form(min_length=1, max_length=80)],
    map_: Annotated[str, Form(alias="map", description="code=FIELD,name=FIELD[,parent=FIELD][,level=FIELD]")],
    level: Annotated[str | None, Form(pattern="^(city|county|township)$")] = None,
    datum: Annotated[DatumName, Form()] = "cgcs2000",
    crs: Annotated[str | None, Form(max_length=200)] = None,
    encoding: Annotated[str | None, Form(max_length=40)] = None,
    gpkg_layer: Annotated[str | None, Form(max_length=120)] = None,
    repair: Annotated[bool, Form()] = False,
) -> dict[str, Any]:
    """Import a boundary file into a staged layer; returns the import and validation report."""
    suffix = Path(file.filename or "").suffix.lower()
    if suffix not in jurisdictions.SUPPORTED:
        raise Invalid("file", file.filename, f"a file ending in {', '.join(jurisdictions.SUPPORTED)}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{Path(file.filename or 'upload').stem}{suffix}"
        with path.open("wb") as fh:
            shutil.copyfileobj(file.file, fh)
        rep = jurisdictions.import_layer(
            session, path, level=level, datum=datum, mapping=map_, layer=layer, actor=p.username,
            now=datetime.now(UTC), gpkg_layer=gpkg_layer, encoding=encoding, crs=crs, repair=repair,
        )
    return rep.to_dict()


@router.get("/{layer}/validation")
def validation(session: SessionDep, _: PrincipalDep, layer: str, min_area_m2: MinArea = 10_000.0,
               limit: Annotated[int, Query(ge=0, le=100_000)] = 1000) -> dict[str, Any]:
    """Validation report of a layer (errors block activation, warnings do not)."""
    return boundary_review.validate_version(session, layer, min_area_m2=min_area_m2).to_dict(limit)


@router.get("/{layer}/preview")
def preview(session: SessionDep, settings: SettingsDep, p: PrincipalDep, layer: str,
            limit: Annotated[int, Query(ge=0, le=100_000)] = 1000) -> dict[str, Any]:
    """What activating the layer would change: jurisdictions, open leads and monitors that move."""
    out = boundary_review.preview(session, layer, tolerance_m=settings.assign_tolerance_m,
                                  near_border_m=settings.near_border_m).to_dict(limit if p.has("gis") else 0)
    return out


@router.post("/{layer}/activate", response_model=ActivationPublic)
def activate(session: SessionDep, settings: SettingsDep, p: GisDep, layer: str,
             min_area_m2: MinArea = 10_000.0) -> dict[str, Any]:
    """Validate and activate a staged layer; re-dispatch the open leads whose jurisdiction changes."""
    rep = jurisdictions.activate_layer(session, layer, actor=p.username, now=datetime.now(UTC),
                                       min_area_m2=min_area_m2, tolerance_m=settings.assign_tolerance_m,
                                       near_border_m=settings.near_border_m)
    return rep.to_dict()


@router.post("/rollback", response_model=ActivationPublic)
def rollback(session: SessionDep, settings: SettingsDep, p: GisDep) -> dict[str, Any]:
    """Return to the previously active layer, re-dispatching as on activation."""
    rep = jurisdictions.rollback(session, actor=p.username, now=datetime.now(UTC),
                                 tolerance_m=settings.assign_tolerance_m, near_border_m=settings.near_border_m)
    return rep.to_dict()


@router.get("/history/point")
def point_history(
    session: SessionDep, settings: SettingsDep, _: PrincipalDep,
    lon: Annotated[float, Query(ge=-180, le=180)], lat: Annotated[float, Query(ge=-90, le=90)],
    at: Annotated[datetime | None, Query(description="ISO date-time (default: now)")] = None,
    datum: DatumName = "wgs84",
) -> dict[str, Any]:
    """Which city, county and township held a point at a moment."""
    when = at or datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return jurisdictions.township_at(session, lon, lat, at=when, datum=datum,
                                     tolerance_m=settings.assign_tolerance_m, near_border_m=settings.near_border_m)


@router.get("/history/lead/{ref}")
def lead_history(session: SessionDep, p: PrincipalDep, ref: str) -> dict[str, Any]:
    """A lead's jurisdiction when received, now, and every dispatch between (scope applies)."""
    return jurisdictions.lead_history(session, p, ref)
