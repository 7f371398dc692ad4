"""Datums, datum conversion and metric coordinate reference systems.

Storage coordinates are lon/lat in EPSG:4326. Every input coordinate carries a :class:`Datum`;
GCJ-02 (Amap, Tencent, WeChat) and BD-09 (Baidu) are converted here, at the edge, before any
spatial test. CGCS2000 (EPSG:4490) is treated as equal to WGS84: the two frames differ by
centimetres, far below the accuracy of any boundary layer we hold.

GCJ-02 is a published-by-implementation obfuscation of WGS84. The forward formula below is the
widely documented one (Krasovsky ellipsoid constants, polynomial + sine offsets); it has no
closed-form inverse, so :func:`gcj02_to_wgs84` solves the forward transform iteratively.

All point conversions accept numpy arrays or Python scalars and broadcast like numpy ufuncs.
"""

from __future__ import annotations

import functools
import math
from enum import StrEnum
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import pyproj
import shapely

__all__ = [
    "CoordinateError",
    "Datum",
    "DatumError",
    "bd09_to_gcj02",
    "bd09_to_wgs84",
    "from_storage",
    "gcj02_to_bd09",
    "gcj02_to_wgs84",
    "geodesic_distance_m",
    "geometry_to_storage",
    "in_china_bbox",
    "likely_swapped_china",
    "metric_crs_for",
    "parse_datum",
    "to_storage",
    "transformer",
    "validate_lonlat",
    "wgs84_to_bd09",
    "wgs84_to_gcj02",
]

ArrayLike: TypeAlias = npt.ArrayLike
FloatArray: TypeAlias = npt.NDArray[np.float64]

STORAGE_CRS = pyproj.CRS.from_epsg(4326)


class Datum(StrEnum):
    """Horizontal datum (coordinate frame) a lon/lat pair is expressed in."""

    wgs84 = "wgs84"
    cgcs2000 = "cgcs2000"
    gcj02 = "gcj02"
    bd09 = "bd09"


class DatumError(ValueError):
    """An unknown datum name was given."""


class CoordinateError(ValueError):
    """A coordinate is not a finite lon/lat inside the valid ranges."""


def parse_datum(value: str | Datum) -> Datum:
    """Parse a datum name (case-insensitive, ``-``/``_`` ignored).

    Parameters
    ----------
    value : str
        For example ``"wgs84"``, ``"GCJ-02"``, ``"bd09"``, ``"cgcs2000"``.

    Returns
    -------
    Datum

    Raises
    ------
    DatumError
        If the name is not one of the allowed datums; the message lists them.
    """
    if isinstance(value, Datum):
        return value
    key = str(value).strip().lower().replace("-", "").replace("_", "")
    try:
        return Datum(key)
    except ValueError:
        allowed = ", ".join(d.value for d in Datum)
        raise DatumError(f"datum: {value!r} is not a known datum; allowed: {allowed}") from None


# --------------------------------------------------------------------------------------------
# GCJ-02
# --------------------------------------------------------------------------------------------

# Krasovsky 1940 ellipsoid, which the GCJ-02 formula uses for its metre -> degree scaling.
_GCJ_A = 6378245.0
_GCJ_EE = 0.00669342162296594323

# The usual rough "is this in China" box used by every GCJ-02 implementation: outside it the
# obfuscation is not applied, so GCJ-02 == WGS84 there. It is deliberately a box, not the real
# border: that is what the providers' implementations do, and matching them matters more than
# geographic truth (points in neighbouring countries inside the box are shifted too).
CHINA_BBOX = (72.004, 0.8293, 137.8347, 55.8271)  # min lon, min lat, max lon, max lat


def in_china_bbox(lon: ArrayLike, lat: ArrayLike) -> npt.NDArray[np.bool_]:
    """Return whether points fall in the rough China box where GCJ-02 differs from WGS84.

    Parameters
    ----------
    lon, lat : array_like
        Longitude and latitude in degrees.

    Returns
    -------
    numpy.ndarray of bool
        True inside lon 72.004–137.8347, lat 0.8293–55.8271 (inclusive).
    """
    x = np.asarray(lon, dtype=np.float64)
    y = np.asarray(lat, dtype=np.float64)
    x0, y0, x1, y1 = CHINA_BBOX
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


def _gcj_offset(lon: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
    """GCJ-02 offset (dlon, dlat) in degrees to add to a WGS84 point (inside China)."""
    x = lon - 105.0
    y = lat - 35.0
    sqrt_abs_x = np.sqrt(np.abs(x))
    pi = math.pi
    dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * sqrt_abs_x
    dlat += (20.0 * np.sin(6.0 * x * pi) + 20.0 * np.sin(2.0 * x * pi)) * 2.0 / 3.0
    dlat += (20.0 * np.sin(y * pi) + 40.0 * np.sin(y / 3.0 * pi)) * 2.0 / 3.0
    dlat += (160.0 * np.sin(y / 12.0 * pi) + 320.0 * np.sin(y * pi / 30.0)) * 2.0 / 3.0
    dlon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * sqrt_abs_x
    dlon += (20.0 * np.sin(6.0 * x * pi) + 20.0 * np.sin(2.0 * x * pi)) * 2.0 / 3.0
    dlon += (20.0 * np.sin(x * pi) + 40.0 * np.sin(x / 3.0 * pi)) * 2.0 / 3.0
    dlon += (150.0 * np.sin(x / 12.0 * pi) + 300.0 * np.sin(x / 30.0 * pi)) * 2.0 / 3.0
    # Scale the metre-like offsets to degrees on the Krasovsky ellipsoid.
    rad_lat = lat / 180.0 * pi
    magic = 1.0 - _GCJ_EE * np.sin(rad_lat) ** 2
    sqrt_magic = np.sqrt(magic)
    dlat = (dlat * 180.0) / ((_GCJ_A * (1.0 - _GCJ_EE)) / (magic * sqrt_magic) * pi)
    dlon = (dlon * 180.0) / (_GCJ_A / sqrt_magic * np.cos(rad_lat) * pi)
    return dlon, dlat


def _as_float(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    x, y = np.broadcast_arrays(np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64))
    return x, y


def _out(x: FloatArray, y: FloatArray, scalar: bool) -> tuple[Any, Any]:
    if scalar:
        return float(x), float(y)
    return x, y


def _is_scalar(lon: ArrayLike, lat: ArrayLike) -> bool:
    return np.ndim(lon) == 0 and np.ndim(lat) == 0


def wgs84_to_gcj02(lon: ArrayLike, lat: ArrayLike) -> tuple[Any, Any]:
    """Convert WGS84 lon/lat to GCJ-02.

    Parameters
    ----------
    lon, lat : array_like or float
        WGS84 degrees.

    Returns
    -------
    (lon, lat)
        GCJ-02 degrees, floats for scalar input, arrays otherwise. Points outside
        :data:`CHINA_BBOX` are returned unchanged.
    """
    scalar = _is_scalar(lon, lat)
    x, y = _as_float(lon, lat)
    dlon, dlat = _gcj_offset(x, y)
    inside = in_china_bbox(x, y)
    return _out(np.where(inside, x + dlon, x), np.where(inside, y + dlat, y), scalar)


# Iteration stops when the largest step is below this many degrees (~1 mm); the GCJ-02 forward
# map is a small perturbation of the identity (Jacobian ~ I + O(1e-5)), so the fixed-point
# iteration x <- x - (f(x) - target) contracts by ~1e-5 per step and converges in 2-4 steps.
_INVERSE_TOL_DEG = 1e-8
_INVERSE_MAX_ITER = 30


def gcj02_to_wgs84(lon: ArrayLike, lat: ArrayLike) -> tuple[Any, Any]:
    """Convert GCJ-02 lon/lat to WGS84 by solving the forward transform.

    The forward transform has no closed-form inverse; a fixed-point iteration on it reaches
    better than 1 mm (tested to < 1 cm over China's whole extent).

    Parameters
    ----------
    lon, lat : array_like or float
        GCJ-02 degrees.

    Returns
    -------
    (lon, lat)
        WGS84 degrees. Outside :data:`CHINA_BBOX` the input is returned unchanged.
    """
    scalar = _is_scalar(lon, lat)
    gx, gy = _as_float(lon, lat)
    wx = gx.copy()
    wy = gy.copy()
    for _ in range(_INVERSE_MAX_ITER):
        fx, fy = wgs84_to_gcj02(wx, wy)
        ex = np.asarray(fx) - gx
        ey = np.asarray(fy) - gy
        wx = wx - ex
        wy = wy - ey
        if not (
            np.nanmax(np.abs(ex), initial=0.0) > _INVERSE_TOL_DEG
            or np.nanmax(np.abs(ey), initial=0.0) > _INVERSE_TOL_DEG
        ):
            break
    return _out(wx, wy, scalar)


# --------------------------------------------------------------------------------------------
# BD-09 (Baidu): a further distortion applied on top of GCJ-02.
# --------------------------------------------------------------------------------------------

_X_PI = math.pi * 3000.0 / 180.0


def gcj02_to_bd09(lon: ArrayLike, lat: ArrayLike) -> tuple[Any, Any]:
    """Convert GCJ-02 lon/lat to BD-09.

    Parameters
    ----------
    lon, lat : array_like or float
        GCJ-02 degrees.

    Returns
    -------
    (lon, lat)
        BD-09 degrees.
    """
    scalar = _is_scalar(lon, lat)
    x, y = _as_float(lon, lat)
    z = np.sqrt(x * x + y * y) + 0.00002 * np.sin(y * _X_PI)
    theta = np.arctan2(y, x) + 0.000003 * np.cos(x * _X_PI)
    return _out(z * np.cos(theta) + 0.0065, z * np.sin(theta) + 0.006, scalar)


def bd09_to_gcj02(lon: ArrayLike, lat: ArrayLike) -> tuple[Any, Any]:
    """Convert BD-09 lon/lat to GCJ-02.

    The usual closed-form "inverse" is only approximate (errors of decimetres), so it is used
    as the starting point of a fixed-point refinement on :func:`gcj02_to_bd09`.

    Parameters
    ----------
    lon, lat : array_like or float
        BD-09 degrees.

    Returns
    -------
    (lon, lat)
        GCJ-02 degrees.
    """
    scalar = _is_scalar(lon, lat)
    bx, by = _as_float(lon, lat)
    x = bx - 0.0065
    y = by - 0.006
    z = np.sqrt(x * x + y * y) - 0.00002 * np.sin(y * _X_PI)
    theta = np.arctan2(y, x) - 0.000003 * np.cos(x * _X_PI)
    gx = z * np.cos(theta)
    gy = z * np.sin(theta)
    for _ in range(_INVERSE_MAX_ITER):
        fx, fy = gcj02_to_bd09(gx, gy)
        ex = np.asarray(fx) - bx
        ey = np.asarray(fy) - by
        gx = gx - ex
        gy = gy - ey
        if not (
            np.nanmax(np.abs(ex), initial=0.0) > _INVERSE_TOL_DEG
            or np.nanmax(np.abs(ey), initial=0.0) > _INVERSE_TOL_DEG
        ):
            break
    return _out(gx, gy, scalar)


def wgs84_to_bd09(lon: ArrayLike, lat: ArrayLike) -> tuple[Any, Any]:
    """Convert WGS84 lon/lat to BD-09 (via GCJ-02).

    Parameters
    ----------
    lon, lat : array_like or float
        WGS84 degrees.

    Returns
    -------
    (lon, lat)
        BD-09 degrees.
    """
    return gcj02_to_bd09(*wgs84_to_gcj02(lon, lat))


def bd09_to_wgs84(lon: ArrayLike, lat: ArrayLike) -> tuple[Any, Any]:
    """Convert BD-09 lon/lat to WGS84 (via GCJ-02).

    Parameters
    ----------
    lon, lat : array_like or float
        BD-09 degrees.

    Returns
    -------
    (lon, lat)
        WGS84 degrees.
    """
    return gcj02_to_wgs84(*bd09_to_gcj02(lon, lat))


def to_storage(lon: ArrayLike, lat: ArrayLike, datum: str | Datum) -> tuple[Any, Any]:
    """Convert lon/lat in any supported datum to storage lon/lat (EPSG:4326).

    Parameters
    ----------
    lon, lat : array_like or float
        Degrees in ``datum``.
    datum : Datum or str
        The datum of the input; CGCS2000 is treated as equal to WGS84.

    Returns
    -------
    (lon, lat)
        Storage (WGS84) degrees.
    """
    d = parse_datum(datum)
    if d is Datum.gcj02:
        return gcj02_to_wgs84(lon, lat)
    if d is Datum.bd09:
        return bd09_to_wgs84(lon, lat)
    scalar = _is_scalar(lon, lat)
    return _out(*_as_float(lon, lat), scalar)


def from_storage(lon: ArrayLike, lat: ArrayLike, datum: str | Datum) -> tuple[Any, Any]:
    """Convert storage lon/lat (EPSG:4326) to ``datum``.

    Parameters
    ----------
    lon, lat : array_like or float
        Storage (WGS84) degrees.
    datum : Datum or str
        The target datum.

    Returns
    -------
    (lon, lat)
        Degrees in ``datum``.
    """
    d = parse_datum(datum)
    if d is Datum.gcj02:
        return wgs84_to_gcj02(lon, lat)
    if d is Datum.bd09:
        return wgs84_to_bd09(lon, lat)
    scalar = _is_scalar(lon, lat)
    return _out(*_as_float(lon, lat), scalar)


def geometry_to_storage(geoms: Any, datum: str | Datum) -> npt.NDArray[np.object_]:
    """Convert geometries (e.g. a boundary layer) from ``datum`` to storage lon/lat.

    Parameters
    ----------
    geoms : numpy.ndarray of shapely geometries, GeoSeries or sequence
        Geometries whose coordinates are lon/lat in ``datum``.
    datum : Datum or str
        The declared datum of the layer. WGS84 and CGCS2000 are returned unchanged.

    Returns
    -------
    numpy.ndarray of shapely geometries
        Same shape and order as the input.
    """
    d = parse_datum(datum)
    arr = np.asarray(getattr(geoms, "values", geoms), dtype=object)
    if d in (Datum.wgs84, Datum.cgcs2000):
        return arr

    def _convert(coords: FloatArray) -> FloatArray:
        x, y = to_storage(coords[:, 0], coords[:, 1], d)
        return np.column_stack([x, y])

    return np.asarray(shapely.transform(arr, _convert), dtype=object)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def validate_lonlat(lon: ArrayLike, lat: ArrayLike) -> None:
    """Check lon/lat are finite and within ±180 / ±90.

    Parameters
    ----------
    lon, lat : array_like or float
        Degrees.

    Raises
    ------
    CoordinateError
        Naming the field, the first offending value (and its index for arrays) and the
        allowed range.
    """
    x = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    y = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    if x.shape != y.shape:
        raise CoordinateError(f"lon/lat: shapes differ ({x.shape} vs {y.shape})")
    for name, values, limit in (("lon", x, 180.0), ("lat", y, 90.0)):
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(values) | (np.abs(values) > limit)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            where = f" at index {i}" if x.size > 1 else ""
            raise CoordinateError(
                f"{name}: {float(values[i])!r}{where} is not a valid {name}; "
                f"allowed: a finite number in [-{limit:g}, {limit:g}]"
            )


# China's rough extent (lon 73-135, lat 18-54) never overlaps its mirror image (lat 73-135 is
# impossible, lon 18-54 is far west of China), so a pair that only makes sense after swapping
# the axes is almost certainly a lat/lon swap - the most common intake error besides datums.
_CHINA_LON = (73.0, 135.5)
_CHINA_LAT = (3.5, 54.0)


def likely_swapped_china(lon: ArrayLike, lat: ArrayLike) -> npt.NDArray[np.bool_]:
    """Detect lon/lat pairs that are probably swapped, for data expected in China.

    A pair is flagged when (lon, lat) is outside China's rough extent (lon 73–135.5,
    lat 3.5–54) but (lat, lon) is inside it. Since the two boxes cannot overlap, a point in
    China is never flagged.

    Parameters
    ----------
    lon, lat : array_like or float
        Degrees as received.

    Returns
    -------
    numpy.ndarray of bool
        True where swapping the axes would put the point in China.
    """
    x = np.asarray(lon, dtype=np.float64)
    y = np.asarray(lat, dtype=np.float64)

    def _in(a: FloatArray, b: FloatArray) -> npt.NDArray[np.bool_]:
        return (
            (a >= _CHINA_LON[0])
            & (a <= _CHINA_LON[1])
            & (b >= _CHINA_LAT[0])
            & (b <= _CHINA_LAT[1])
        )

    return ~_in(x, y) & _in(y, x)


# --------------------------------------------------------------------------------------------
# Metric CRS, transformers, geodesics
# --------------------------------------------------------------------------------------------

_GEOD = pyproj.Geod(ellps="WGS84")
# Mean Earth radius, only used to bound projection scale error when choosing a CRS.
_EARTH_R_M = 6371008.8
# A transverse Mercator's scale error at distance d from its central meridian is ~d^2 / (2 R^2);
# keeping d <= 180 km gives <= 0.04 % for distances and <= 0.08 % for areas (scale squared),
# comfortably inside the 0.1 % budget.
_TM_MAX_OFFSET_M = 180_000.0


def _max_offset_m(bounds: tuple[float, float, float, float], central_meridian: float) -> float:
    minx, miny, maxx, maxy = bounds
    # The offset in metres is largest at the latitude closest to the equator.
    lat_low = min(abs(miny), abs(maxy)) if miny * maxy > 0 else 0.0
    dlon = max(abs(minx - central_meridian), abs(maxx - central_meridian))
    return math.radians(dlon) * _EARTH_R_M * math.cos(math.radians(lat_low))


def metric_crs_for(bounds: tuple[float, float, float, float]) -> pyproj.CRS:
    """Choose a projected (metre) CRS suited to a service area.

    The rule, in order of preference:

    1. The CGCS2000 3-degree Gauss-Krüger zone (EPSG:4534–4554, central meridians 75°E–135°E)
       whose central meridian is nearest the area's centre, if no part of the area is more than
       180 km from that meridian. This is the national surveying standard, recognised by every
       Chinese GIS user, and its scale error stays under 0.04 % (distances) / 0.08 % (areas).
       Xuzhou (116.3–118.7°E) gets EPSG:4548 (CM 117°E).
    2. Otherwise, if the area is at most 360 km wide: a transverse Mercator centred on the
       area's mid-longitude (same error bound, no standard code).
    3. Otherwise (provinces, the whole country): an Albers equal-area conic with standard
       parallels at 1/6 and 5/6 of the latitude range. Areas stay exact; distance scale errors
       of up to a few percent remain, so use :func:`geodesic_distance_m` for long distances.

    Parameters
    ----------
    bounds : tuple of float
        ``(minx, miny, maxx, maxy)`` in storage lon/lat degrees.

    Returns
    -------
    pyproj.CRS
    """
    minx, miny, maxx, maxy = (float(b) for b in bounds)
    if not (minx <= maxx and miny <= maxy):
        raise CoordinateError(f"bounds: {bounds!r} is not (minx, miny, maxx, maxy) with min <= max")
    validate_lonlat([minx, maxx], [miny, maxy])
    cx = (minx + maxx) / 2.0
    zone_cm = min(max(round(cx / 3.0) * 3, 75), 135)
    if _max_offset_m((minx, miny, maxx, maxy), zone_cm) <= _TM_MAX_OFFSET_M:
        return pyproj.CRS.from_epsg(4534 + (zone_cm - 75) // 3)
    if _max_offset_m((minx, miny, maxx, maxy), cx) <= _TM_MAX_OFFSET_M:
        return pyproj.CRS.from_proj4(
            f"+proj=tmerc +lat_0=0 +lon_0={cx:.6f} +k=1 +x_0=500000 +y_0=0 "
            "+ellps=GRS80 +units=m +no_defs +type=crs"
        )
    dy = maxy - miny
    lat1, lat2 = miny + dy / 6.0, maxy - dy / 6.0
    return pyproj.CRS.from_proj4(
        f"+proj=aea +lat_0={(miny + maxy) / 2:.6f} +lon_0={cx:.6f} +lat_1={lat1:.6f} "
        f"+lat_2={lat2:.6f} +x_0=0 +y_0=0 +ellps=GRS80 +units=m +no_defs +type=crs"
    )


@functools.lru_cache(maxsize=64)
def _cached_transformer(src: str, dst: str) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(
        pyproj.CRS.from_user_input(src), pyproj.CRS.from_user_input(dst), always_xy=True
    )


def transformer(src: Any, dst: Any) -> pyproj.Transformer:
    """Return a cached ``pyproj.Transformer`` with ``always_xy=True`` (lon, lat order).

    Parameters
    ----------
    src, dst : pyproj.CRS, str or int
        Anything ``pyproj.CRS.from_user_input`` accepts.

    Returns
    -------
    pyproj.Transformer
        Built once per (src, dst) pair and reused (building one costs milliseconds).
    """
    # CRS objects are keyed by their WKT so that equal CRSs share one transformer.
    return _cached_transformer(
        pyproj.CRS.from_user_input(src).to_wkt(), pyproj.CRS.from_user_input(dst).to_wkt()
    )


def geodesic_distance_m(lon1: ArrayLike, lat1: ArrayLike, lon2: ArrayLike, lat2: ArrayLike) -> Any:
    """Ellipsoidal (WGS84) geodesic distance in metres, vectorised.

    Parameters
    ----------
    lon1, lat1, lon2, lat2 : array_like or float
        Storage degrees.

    Returns
    -------
    float or numpy.ndarray
        Distances in metres (float for scalar input).
    """
    scalar = all(np.ndim(v) == 0 for v in (lon1, lat1, lon2, lat2))
    a, b, c, d = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (lon1, lat1, lon2, lat2))
    )
    _, _, dist = _GEOD.inv(a, b, c, d)
    out = np.asarray(dist, dtype=np.float64)
    return float(out) if scalar else out
