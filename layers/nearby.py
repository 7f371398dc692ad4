"""Cases near me: the leads in a user's scope around a point, by real (geodesic) distance.

Both backends answer through their spatial index, never a table scan:

* PostGIS: the GiST index on ``leads.geom`` — ``&&`` against a degree box that surely contains the
  search circle, then ``ST_DWithin`` on geography (metres on the spheroid); k-nearest without a
  radius uses KNN (``ORDER BY geom <-> point``).
* SpatiaLite: the R*Tree ``idx_leads_geom`` (``pkid`` is the lead id) queried with the same box.

Distances are then computed exactly in Python with the WGS84 geodesic
(:func:`geo.crs.geodesic_distance_m`), so both backends report the same metres.

KNN on lon/lat orders by *degrees*, which is not metric order (a degree of longitude is ~0.83 of
a degree of latitude in Xuzhou). So the k nearest by degrees only give an upper bound ``d_k`` on
the true k-th metric distance (k leads lie within ``d_k``); a radius query at ``d_k`` then
returns every lead that can be among the true k nearest, and those are sorted by metres.
SpatiaLite has no KNN operator on the R*Tree, so it widens a radius ×4 from 500 m until k leads
are inside (or the whole world is).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import ColumnElement, Float, Integer, Select, and_, bindparam, column, func, select, table
from sqlalchemy.orm import Session

from geo import crs as gcrs
from layers.errors import Invalid
from layers.models import SRID, Lead
from layers.users import Principal, lead_scope_clause, scope_clause

MAX_RADIUS_M = 50_000.0
MAX_LIMIT = 500
# Fewest metres a degree of latitude can span (at the equator, WGS84): boxes built with it
# always contain the circle.
_M_PER_DEG_LAT_MIN = 110_574.0
_M_PER_DEG_LON_EQ = 111_320.0
_FIRST_RADIUS_M = 500.0
_WORLD_M = 20_040_000.0  # half the equator: every point on Earth is closer than this

_RTREE = table("idx_leads_geom", column("pkid"), column("xmin"), column("xmax"), column("ymin"), column("ymax"))


class NearbySort(StrEnum):
    """How the hits are ordered."""

    distance = "distance"
    deadline = "deadline"


class NearbyHit(NamedTuple):
    """One lead near the query point (storage lon/lat).

    A named tuple: a field user's search builds dozens of these per request, and a tuple is the
    cheapest immutable record to build.
    """

    id: int
    code: str
    category: str
    status: str
    urgency: str
    address: str
    body_code: str | None
    county_code: str | None
    township_code: str | None
    lon: float
    lat: float
    distance_m: float
    due_at: datetime | None


def search_box(lon: float, lat: float, radius_m: float) -> tuple[float, float, float, float]:
    """A lon/lat box that surely contains the geodesic circle of ``radius_m`` around a point.

    Parameters
    ----------
    lon, lat
        Storage degrees of the centre.
    radius_m
        Radius in metres.

    Returns
    -------
    tuple of float
        ``(minx, miny, maxx, maxy)``; the whole longitude range when the circle nears a pole.
    """
    # 1 % margin covers the ellipsoid's variation and the R*Tree's float32 rounding.
    dlat = radius_m * 1.01 / _M_PER_DEG_LAT_MIN
    miny, maxy = max(lat - dlat, -90.0), min(lat + dlat, 90.0)
    far = max(abs(miny), abs(maxy))
    if far >= 89.0:
        return (-180.0, miny, 180.0, maxy)
    dlon = radius_m * 1.01 / (_M_PER_DEG_LON_EQ * math.cos(math.radians(far)))
    if dlon >= 180.0:
        return (-180.0, miny, 180.0, maxy)
    # Boxes crossing the antimeridian are widened to all longitudes rather than split in two.
    if lon - dlon < -180.0 or lon + dlon > 180.0:
        return (-180.0, miny, 180.0, maxy)
    return (lon - dlon, miny, lon + dlon, maxy)


def _validate(lon: Any, lat: Any, datum: str, radius_m: float | None, limit: int,
              sort: str) -> tuple[float, float, NearbySort]:
    try:
        gcrs.validate_lonlat(float(lon), float(lat))
    except (TypeError, ValueError) as exc:
        field = "lat" if str(exc).startswith("lat") else "lon"
        raise Invalid(field, lon if field == "lon" else lat, "a finite number (lon in ±180, lat in ±90)") from None
    try:
        d = gcrs.parse_datum(datum)
    except gcrs.DatumError:
        raise Invalid("datum", datum, "one of " + ", ".join(x.value for x in gcrs.Datum)) from None
    if radius_m is not None and not (0 < radius_m <= MAX_RADIUS_M and math.isfinite(radius_m)):
        raise Invalid("radius_m", radius_m, f"metres in (0, {MAX_RADIUS_M:g}]")
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid("limit", limit, f"an integer in [1, {MAX_LIMIT}]")
    try:
        order = NearbySort(sort)
    except ValueError:
        raise Invalid("sort", sort, "one of " + ", ".join(s.value for s in NearbySort)) from None
    x, y = gcrs.to_storage(float(lon), float(lat), d)
    return float(x), float(y), order


def _columns(e: Any = Lead) -> Select[Any]:
    return select(e.id, e.code, e.category_code, e.status, e.urgency, e.address,
                  e.body_code, e.county_code, e.township_code,
                  func.ST_X(e.geom).label("x"), func.ST_Y(e.geom).label("y"), e.due_at)


def _conditions(p: Principal, status: Sequence[str]) -> list[ColumnElement[bool]]:
    conds = [lead_scope_clause(p), Lead.geom.is_not(None)]
    if status:
        conds.append(Lead.status.in_(list(status)))
    return conds


def _point(lon: Any, lat: Any) -> Any:
    return func.ST_SetSRID(func.ST_MakePoint(lon, lat), SRID)


def within_stmt(backend: str, p: Principal, lon: float, lat: float, radius_m: float,
                status: Sequence[str] = ()) -> Select[Any]:
    """The index-backed candidate query for a radius search (exposed for EXPLAIN in tests).

    Parameters
    ----------
    backend
        ``"postgis"`` or ``"spatialite"``.
    p, lon, lat, radius_m, status
        Principal (scope), storage centre, radius in metres, optional status filter.

    Returns
    -------
    sqlalchemy.Select
        PostGIS returns exactly the leads within ``radius_m``; SpatiaLite returns the leads in the
        enclosing box (the caller trims them to the circle).
    """
    return _template(backend, *_scope_key(p), tuple(status)).params(_circle(lon, lat, radius_m))


def _scope_key(p: Principal) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(sorted(p.scope_codes)), tuple(sorted(p.scope_bodies))


def _circle(lon: float, lat: float, radius_m: float) -> dict[str, float]:
    minx, miny, maxx, maxy = search_box(lon, lat, radius_m)
    return {"n_lon": lon, "n_lat": lat, "n_radius": radius_m, "n_minx": minx, "n_miny": miny,
            "n_maxx": maxx, "n_maxy": maxy}


@lru_cache(maxsize=512)
def _template(backend: str, codes: tuple[str, ...], bodies: tuple[str, ...],
              status: tuple[str, ...], order: NearbySort | None = None) -> Select[Any]:
    """The radius query for one shape of scope, with the circle as bound parameters.

    Built once per scope (there are few), so a request only binds numbers: constructing the
    statement anew cost more than the database spent answering it. With ``order`` (PostGIS),
    the database also sorts by its own spheroid distance (or deadline, then distance) and
    returns the first ``n_limit`` rows only, so a dense neighbourhood does not ship every lead
    of the circle to be ranked in Python; the caller asks for a margin beyond its limit and
    ranks those by the exact geodesic.
    """
    p = Principal(username="", roles=frozenset(), scope_codes=frozenset(codes), scope_bodies=frozenset(bodies))
    minx, miny, maxx, maxy = (bindparam(f"n_{k}", type_=Float) for k in ("minx", "miny", "maxx", "maxy"))
    lon, lat, radius = (bindparam(f"n_{k}", type_=Float) for k in ("lon", "lat", "radius"))
    if backend == "postgis":
        # The circle first, materialised, then the scope on those few rows: given both at once,
        # the planner also bitmap-scans the county index (a quarter of the table) to AND it with
        # the GiST hits, which cost 10 ms at 1M leads for a 1 km circle.
        env = func.ST_MakeEnvelope(minx, miny, maxx, maxy, SRID)
        spatial = [Lead.geom.op("&&")(env),
                   func.ST_DWithin(func.geography(Lead.geom), func.geography(_point(lon, lat)), radius)]
        if status:
            spatial.append(Lead.status.in_(list(status)))
        near = (
            select(Lead.id, Lead.code, Lead.category_code, Lead.status, Lead.urgency, Lead.address,
                   Lead.city_code, Lead.county_code, Lead.township_code, Lead.body_code, Lead.geom, Lead.due_at)
            .where(*spatial).cte("near").prefix_with("MATERIALIZED")
        )
        stmt = _columns(near.c).where(scope_clause(p, near.c))
        if order is None:
            return stmt
        dist = func.ST_Distance(func.geography(near.c.geom), func.geography(_point(lon, lat)))
        keys = ([dist, near.c.id] if order is NearbySort.distance
                else [near.c.due_at.is_(None), near.c.due_at, dist, near.c.id])
        return stmt.order_by(*keys).limit(bindparam("n_limit", type_=Integer))
    conds = _conditions(p, status)
    hits = select(_RTREE.c.pkid).where(_RTREE.c.xmin >= minx, _RTREE.c.xmax <= maxx,
                                       _RTREE.c.ymin >= miny, _RTREE.c.ymax <= maxy)
    conds.append(Lead.id.in_(hits))
    return _columns().where(and_(*conds))


def _hits(session: Session, stmt: Select[Any], lon: float, lat: float, radius_m: float,
          params: dict[str, float] | None = None) -> list[NearbyHit]:
    # Core execution and plain tuples: the ORM's result machinery cost more than the query.
    rows = session.connection().execute(stmt, params).all()
    if not rows:
        return []
    # Columns as _columns() selects them: id, code, category, status, urgency, address, body,
    # county, township, x, y, due_at.
    xs = np.fromiter((r[9] for r in rows), dtype=float, count=len(rows))
    ys = np.fromiter((r[10] for r in rows), dtype=float, count=len(rows))
    dist = np.atleast_1d(gcrs.geodesic_distance_m(lon, lat, xs, ys))
    keep = (dist <= radius_m).tolist()
    return [NearbyHit(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], float(r[9]), float(r[10]), d, r[11])
            for r, d, k in zip(rows, np.round(dist, 2).tolist(), keep, strict=True) if k]


# Rows beyond the limit fetched when PostGIS ranks by its own distance: its spheroid distance
# and the geodesic used for the answer agree to well under a millimetre, so only exact ties
# could reorder — a handful of spares covers them.
_RANK_MARGIN = 8


def _within(session: Session, backend: str, p: Principal, lon: float, lat: float, radius_m: float,
            status: Sequence[str], order: NearbySort | None = None, limit: int | None = None) -> list[NearbyHit]:
    params: dict[str, float] = _circle(lon, lat, radius_m)
    if backend == "postgis" and order is not None and limit is not None:
        stmt = _template(backend, *_scope_key(p), tuple(status), order)
        params["n_limit"] = limit + _RANK_MARGIN
    else:
        stmt = _template(backend, *_scope_key(p), tuple(status))
    return _hits(session, stmt, lon, lat, radius_m, params)


def _k_bound_postgis(session: Session, p: Principal, lon: float, lat: float, k: int,
                     radius_m: float | None, status: Sequence[str]) -> float | None:
    """Metres within which at least ``k`` leads surely lie (``None``: fewer than k exist)."""
    conds = _conditions(p, status)
    if radius_m is not None:
        minx, miny, maxx, maxy = search_box(lon, lat, radius_m)
        conds.append(Lead.geom.op("&&")(func.ST_MakeEnvelope(minx, miny, maxx, maxy, SRID)))
    knn = (select(func.ST_X(Lead.geom).label("x"), func.ST_Y(Lead.geom).label("y"))
           .where(and_(*conds)).order_by(Lead.geom.op("<->")(_point(lon, lat))).limit(k))
    rows = session.execute(knn).all()
    if len(rows) < k:
        return None
    d = gcrs.geodesic_distance_m(lon, lat, np.array([r.x for r in rows]), np.array([r.y for r in rows]))
    return float(np.max(d)) + 0.01


def nearby(session: Session, p: Principal, lon: float, lat: float, *, datum: str = "wgs84",
           radius_m: float | None = None, status: Sequence[str] = (), limit: int = 50,
           sort: str = "distance") -> list[NearbyHit]:
    """The leads ``p`` may see around a point, nearest first or soonest deadline first.

    Parameters
    ----------
    session
        Any session (read only).
    p
        The caller; their scope is applied inside the query.
    lon, lat, datum
        The caller's position and its datum (GCJ-02 from Amap/WeChat is converted first).
    radius_m
        Search radius in metres (at most 50 km). ``None``: the ``limit`` nearest leads anywhere.
    status
        Only leads in these states (empty: any state).
    limit
        At most this many hits (1–500).
    sort
        ``"distance"`` (nearest first) or ``"deadline"`` (soonest ``due_at`` first, leads without
        a deadline last, then by distance). Without a radius, ``deadline`` orders the ``limit``
        nearest leads.

    Returns
    -------
    list of NearbyHit

    Raises
    ------
    layers.errors.Invalid
        For a non-finite or out-of-range coordinate, an unknown datum, a radius or limit out of
        range, or an unknown sort; the message names the field and the allowed values.
    """
    x, y, order = _validate(lon, lat, datum, radius_m, limit, sort)
    backend = "postgis" if session.get_bind().dialect.name == "postgresql" else "spatialite"
    if radius_m is not None and (order is NearbySort.deadline or backend == "postgis"):
        # A radius bounds the work already; one index query answers it (a KNN pass first made
        # the planner sort every lead of the caller's scope).
        hits = _within(session, backend, p, x, y, radius_m, status, order, limit)
    elif backend == "postgis":
        bound = _k_bound_postgis(session, p, x, y, limit, radius_m, status)
        r = radius_m if bound is None else min(bound, radius_m or bound)
        hits = _within(session, backend, p, x, y, r if r is not None else _WORLD_M, status,
                       NearbySort.distance, limit)
    else:
        r = min(_FIRST_RADIUS_M, radius_m or _FIRST_RADIUS_M)
        while True:
            hits = _within(session, backend, p, x, y, r, status)
            cap = radius_m if radius_m is not None else _WORLD_M
            if len(hits) >= limit or r >= cap:
                break
            r = min(r * 4.0, cap)
    hits.sort(key=lambda h: (h.distance_m, h.id))
    if order is NearbySort.deadline:
        if radius_m is None:
            hits = hits[:limit]
        far = datetime.max.replace(tzinfo=None)
        hits.sort(key=lambda h: (h.due_at is None, h.due_at.replace(tzinfo=None) if h.due_at else far,
                                 h.distance_m, h.id))
    return hits[:limit]
