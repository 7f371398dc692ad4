"""Public disclosure (信息公开): what the public may see of leads, and nothing more.

Only leads marked ``public`` are published. ``public`` is the publication approval: it covers the
description (there is no separate approval flag in the schema); the complainant's name, phone and
the free-text address are never published. Locations are coarsened:

* ``grid`` (default): snapped to the centre of a ``grid_m`` square cell of the CGCS2000 3-degree
  Gauss-Krüger zone containing the point (EPSG:4534–4554). The published point is a function of
  the cell alone, so every lead of a cell publishes the same point and the true position inside
  the cell cannot be recovered; the published point is at most ``grid_m·√2/2`` from the truth.
* ``township``: the township's centroid (the county's when the township is unknown); leads
  with neither are published without a location.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import shapely
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from geo import crs as gcrs
from layers.errors import Invalid
from layers.models import Body, BoundaryVersion, Category, Jurisdiction, Lead, VersionStatus
from layers.shapes import to_shape

CLOSED_STATES = ("closed", "merged")


class DisclosureSettings(BaseSettings):
    """Operator settings of the public feed (``LEADGRID_PUBLIC_`` environment variables)."""

    model_config = SettingsConfigDict(env_prefix="LEADGRID_PUBLIC_", env_file=".env", extra="ignore")

    coarsen: Literal["grid", "township"] = "grid"
    grid_m: float = Field(default=100.0, ge=10.0, le=10_000.0)
    rate_per_minute: float = Field(default=120.0, gt=0, le=100_000)
    burst: int = Field(default=60, ge=1, le=100_000)


def gk_zone_epsg(lon: np.ndarray) -> np.ndarray:
    """EPSG code of the CGCS2000 3-degree Gauss-Krüger zone (central meridians 75–135 °E)."""
    cm = np.clip(np.round(np.asarray(lon, dtype=float) / 3.0) * 3, 75, 135).astype(int)
    return 4534 + (cm - 75) // 3


def snap_to_grid(lon: Sequence[float] | np.ndarray, lat: Sequence[float] | np.ndarray,
                 grid_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Snap storage points to the centre of their ``grid_m`` cell in a metric CRS.

    Parameters
    ----------
    lon, lat
        Storage degrees.
    grid_m
        Cell side in metres.

    Returns
    -------
    (lon, lat) : numpy arrays
        Storage degrees of each point's cell centre.
    """
    x = np.asarray(lon, dtype=float)
    y = np.asarray(lat, dtype=float)
    out_x, out_y = x.copy(), y.copy()
    zones = gk_zone_epsg(x)
    for epsg in np.unique(zones):
        m = zones == epsg
        fwd = gcrs.transformer(4326, int(epsg))
        ex, ny = fwd.transform(x[m], y[m])
        cx = (np.floor(np.asarray(ex) / grid_m) + 0.5) * grid_m
        cy = (np.floor(np.asarray(ny) / grid_m) + 0.5) * grid_m
        out_x[m], out_y[m] = gcrs.transformer(int(epsg), 4326).transform(cx, cy)
    return out_x, out_y


@dataclass(frozen=True)
class PublicLead:
    """One published lead."""

    code: str
    category: str
    category_name: str
    status: str
    closed: bool
    reported_at: datetime
    description: str
    county_code: str | None
    township_code: str | None
    body_code: str | None
    body_name: str | None
    lon: float | None
    lat: float | None


def _centroids(session: Session, codes: set[str]) -> dict[str, tuple[float, float]]:
    if not codes:
        return {}
    rows = session.execute(
        select(Jurisdiction.code, Jurisdiction.geom)
        .join(BoundaryVersion, BoundaryVersion.id == Jurisdiction.version_id)
        .where(BoundaryVersion.status == VersionStatus.active.value, Jurisdiction.code.in_(sorted(codes)))
    ).all()
    out: dict[str, tuple[float, float]] = {}
    for code, geom in rows:
        shape = to_shape(geom)
        if shape is not None:
            pt = shapely.point_on_surface(shape)  # inside even for a crescent-shaped township
            out[code] = (round(float(pt.x), 6), round(float(pt.y), 6))
    return out


def public_filter(category: str | None = None, jurisdiction: str | None = None,
                  since: datetime | None = None) -> Any:
    """SQL condition for the published leads matching the public feed's filters."""
    conds: list[Any] = [Lead.public.is_(True)]
    if category:
        conds.append(Lead.category_code == category)
    if jurisdiction:
        conds.append((Lead.county_code == jurisdiction) | (Lead.township_code == jurisdiction)
                     | (Lead.city_code == jurisdiction))
    if since is not None:
        conds.append(Lead.reported_at >= since)
    return and_(*conds)


def coarsen(session: Session, points: Sequence[tuple[float | None, float | None, str | None, str | None]],
            settings: DisclosureSettings) -> list[tuple[float | None, float | None]]:
    """Coarsened public locations for ``(lon, lat, township_code, county_code)`` tuples."""
    if settings.coarsen == "township":
        wanted = {c for _, _, t, k in points for c in (t, k) if c}
        cent = _centroids(session, wanted)
        out: list[tuple[float | None, float | None]] = []
        for _, _, t, k in points:
            hit = cent.get(t or "") or cent.get(k or "")
            out.append(hit if hit else (None, None))
        return out
    have = [i for i, (x, _, _, _) in enumerate(points) if x is not None]
    res: list[tuple[float | None, float | None]] = [(None, None)] * len(points)
    if have:
        gx, gy = snap_to_grid([points[i][0] for i in have], [points[i][1] for i in have],  # type: ignore[misc]
                              settings.grid_m)
        for j, i in enumerate(have):
            res[i] = (round(float(gx[j]), 6), round(float(gy[j]), 6))
    return res


def public_leads(session: Session, settings: DisclosureSettings, *, category: str | None = None,
                 jurisdiction: str | None = None, since: datetime | None = None, page: int = 1,
                 page_size: int = 100) -> tuple[int, list[PublicLead]]:
    """The published leads, newest first, with coarsened locations and no personal data.

    Parameters
    ----------
    session
        Any session (read only).
    settings
        Coarsening mode and grid size.
    category, jurisdiction, since
        Optional filters (category code, any-level jurisdiction code, earliest report time).
    page, page_size
        1-based page and its size (at most 1,000).

    Returns
    -------
    (total, items)
    """
    if not 1 <= page_size <= 1000:
        raise Invalid("page_size", page_size, "an integer in [1, 1000]")
    cond = public_filter(category, jurisdiction, since)
    total = int(session.scalar(select(func.count(Lead.id)).where(cond)) or 0)
    rows = session.execute(
        select(Lead.code, Lead.category_code, Category.name.label("category_name"), Lead.status,
               Lead.reported_at, Lead.description, Lead.county_code, Lead.township_code,
               Lead.body_code, Body.name.label("body_name"),
               func.ST_X(Lead.geom).label("x"), func.ST_Y(Lead.geom).label("y"))
        .join(Category, Category.code == Lead.category_code)
        .outerjoin(Body, Body.code == Lead.body_code)
        .where(cond).order_by(Lead.reported_at.desc(), Lead.id.desc())
        .offset((page - 1) * page_size).limit(page_size)
    ).all()
    where = coarsen(session, [(r.x, r.y, r.township_code, r.county_code) for r in rows], settings)
    items = [PublicLead(r.code, r.category_code, r.category_name, r.status, r.status in CLOSED_STATES,
                        r.reported_at, r.description, r.county_code, r.township_code, r.body_code,
                        r.body_name, w[0], w[1]) for r, w in zip(rows, where, strict=True)]
    return total, items


def public_stats(session: Session) -> dict[str, list[dict[str, Any]]]:
    """Lead counts (total, open, closed, public) per county, per township and per body.

    Counts cover every lead, not only the published ones: a count reveals no one, and a
    statistic over published leads only would hide the workload the public is owed.
    """
    closed = case((Lead.status.in_(CLOSED_STATES), 1), else_=0)
    public = case((Lead.public.is_(True), 1), else_=0)

    def counts(key: Any) -> list[dict[str, Any]]:
        rows = session.execute(
            select(key.label("code"), func.count(Lead.id), func.sum(closed), func.sum(public))
            .where(key.is_not(None)).group_by(key).order_by(key)
        ).all()
        return [{"code": c, "total": int(n), "closed": int(cl or 0), "open": int(n) - int(cl or 0),
                 "public": int(pb or 0)} for c, n, cl, pb in rows]

    names = dict(session.execute(
        select(Jurisdiction.code, Jurisdiction.name)
        .join(BoundaryVersion, BoundaryVersion.id == Jurisdiction.version_id)
        .where(BoundaryVersion.status == VersionStatus.active.value)
    ).all())
    names.update(dict(session.execute(select(Body.code, Body.name)).all()))
    out = {"counties": counts(Lead.county_code), "townships": counts(Lead.township_code),
           "bodies": counts(Lead.body_code)}
    for rows in out.values():
        for r in rows:
            r["name"] = names.get(r["code"], "")
    return out
