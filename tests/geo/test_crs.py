"""Tests for geo.crs: datum conversions, validation, metric CRS."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon

from geo import crs
from geo.crs import CoordinateError, Datum, DatumError

# A WGS84 point in central Xuzhou (Pengcheng Square area).
XZ_LON, XZ_LAT = 117.1840, 34.2610


def _china_grid() -> tuple[np.ndarray, np.ndarray]:
    x, y = np.meshgrid(np.linspace(73.0, 135.0, 311), np.linspace(18.0, 54.0, 181))
    return x.ravel(), y.ravel()


def test_parse_datum_accepts_spellings_and_rejects_unknown() -> None:
    assert crs.parse_datum("GCJ-02") is Datum.gcj02
    assert crs.parse_datum("bd_09") is Datum.bd09
    assert crs.parse_datum(Datum.cgcs2000) is Datum.cgcs2000
    with pytest.raises(DatumError, match=r"'utm'.*allowed: wgs84, cgcs2000, gcj02, bd09"):
        crs.parse_datum("utm")


def test_gcj02_shift_in_xuzhou_matches_documented_offset() -> None:
    gx, gy = crs.wgs84_to_gcj02(XZ_LON, XZ_LAT)
    east = crs.geodesic_distance_m(XZ_LON, XZ_LAT, gx, XZ_LAT)
    south = crs.geodesic_distance_m(XZ_LON, XZ_LAT, XZ_LON, gy)
    # SOURCES.md: about 480-530 m east and 120-170 m south in Xuzhou.
    assert gx > XZ_LON and gy < XZ_LAT
    assert 470.0 < east < 545.0
    assert 115.0 < south < 175.0


def test_gcj02_round_trip_over_china_better_than_1cm() -> None:
    x, y = _china_grid()
    gx, gy = crs.wgs84_to_gcj02(x, y)
    # It really moved (the offset field dips to ~18 m in Qinghai, ~100-700 m elsewhere).
    assert np.all(crs.geodesic_distance_m(x, y, gx, gy) > 10.0)
    wx, wy = crs.gcj02_to_wgs84(gx, gy)
    err = crs.geodesic_distance_m(x, y, wx, wy)
    assert err.max() < 0.01


def test_bd09_round_trips_and_offset() -> None:
    x, y = _china_grid()
    bx, by = crs.wgs84_to_bd09(x, y)
    wx, wy = crs.bd09_to_wgs84(bx, by)
    assert crs.geodesic_distance_m(x, y, wx, wy).max() < 0.01
    gx, gy = crs.bd09_to_gcj02(*crs.gcj02_to_bd09(x, y))
    assert crs.geodesic_distance_m(x, y, gx, gy).max() < 0.01
    # BD-09 sits a further ~0.0065 deg east / 0.006 deg north of GCJ-02: several hundred metres.
    g = crs.wgs84_to_gcj02(XZ_LON, XZ_LAT)
    b = crs.gcj02_to_bd09(*g)
    assert 600.0 < crs.geodesic_distance_m(g[0], g[1], b[0], b[1]) < 1000.0


def test_outside_china_gcj02_is_identity() -> None:
    lon = np.array([2.35, -74.0, 139.7, 100.0])
    lat = np.array([48.85, 40.7, 35.7, -5.0])
    gx, gy = crs.wgs84_to_gcj02(lon, lat)
    np.testing.assert_array_equal(gx, lon)
    np.testing.assert_array_equal(gy, lat)
    wx, wy = crs.gcj02_to_wgs84(lon, lat)
    np.testing.assert_array_equal(wx, lon)
    np.testing.assert_array_equal(wy, lat)


def test_scalars_stay_scalars() -> None:
    gx, gy = crs.wgs84_to_gcj02(XZ_LON, XZ_LAT)
    assert isinstance(gx, float) and isinstance(gy, float)


def test_to_and_from_storage() -> None:
    gx, gy = crs.from_storage(XZ_LON, XZ_LAT, "gcj02")
    assert (gx, gy) == crs.wgs84_to_gcj02(XZ_LON, XZ_LAT)
    sx, sy = crs.to_storage(gx, gy, Datum.gcj02)
    assert crs.geodesic_distance_m(sx, sy, XZ_LON, XZ_LAT) < 0.01
    assert crs.to_storage(XZ_LON, XZ_LAT, "cgcs2000") == (XZ_LON, XZ_LAT)
    bx, by = crs.from_storage(XZ_LON, XZ_LAT, "bd09")
    sx, sy = crs.to_storage(bx, by, "bd09")
    assert crs.geodesic_distance_m(sx, sy, XZ_LON, XZ_LAT) < 0.01


def test_geometry_to_storage_moves_gcj_layers_and_keeps_wgs84() -> None:
    sq = Polygon([(117.18, 34.26), (117.19, 34.26), (117.19, 34.27), (117.18, 34.27)])
    out = crs.geometry_to_storage(np.array([sq]), "gcj02")
    ex, ey = crs.gcj02_to_wgs84(117.18, 34.26)
    first = shapely.get_coordinates(out[0])[0]
    assert first == pytest.approx([ex, ey], abs=1e-12)
    same = crs.geometry_to_storage(np.array([sq]), "cgcs2000")
    assert shapely.equals_exact(same[0], sq, tolerance=0.0)


@pytest.mark.parametrize(
    ("lon", "lat", "match"),
    [
        (float("nan"), 34.0, r"lon: nan .*allowed"),
        (117.0, float("inf"), r"lat: inf"),
        (181.0, 34.0, r"lon: 181.0"),
        (117.0, -90.5, r"lat: -90.5"),
    ],
)
def test_validate_lonlat_names_bad_value(lon: float, lat: float, match: str) -> None:
    with pytest.raises(CoordinateError, match=match):
        crs.validate_lonlat(lon, lat)


def test_validate_lonlat_reports_index() -> None:
    with pytest.raises(CoordinateError, match="at index 2"):
        crs.validate_lonlat([117.0, 117.1, 117.2], [34.0, 34.1, 95.0])
    crs.validate_lonlat([117.0, -180.0], [34.0, 90.0])  # limits themselves are fine


def test_likely_swapped_china() -> None:
    flags = crs.likely_swapped_china([34.26, 117.18, 2.35], [117.18, 34.26, 48.85])
    assert flags.tolist() == [True, False, False]


def test_metric_crs_choices() -> None:
    assert crs.metric_crs_for((116.3, 33.7, 118.7, 35.0)).to_epsg() == 4548  # CM 117E
    assert crs.metric_crs_for((120.5, 31.0, 121.0, 31.5)).to_epsg() == 4549  # CM 120E
    wide = crs.metric_crs_for((73.0, 18.0, 135.0, 54.0))
    assert wide.coordinate_operation is not None
    assert wide.coordinate_operation.method_name == "Albers Equal Area"
    mid = crs.metric_crs_for((116.0, 33.0, 119.5, 35.0))  # too wide for one 3-degree zone
    assert mid.coordinate_operation is not None
    assert mid.coordinate_operation.method_name == "Transverse Mercator"


def test_metric_crs_distance_matches_geodesic_over_xuzhou() -> None:
    rng = np.random.default_rng(7)
    n = 2000
    lon1, lon2 = rng.uniform(116.3, 118.7, (2, n))
    lat1, lat2 = rng.uniform(33.7, 35.0, (2, n))
    m = crs.metric_crs_for((116.3, 33.7, 118.7, 35.0))
    t = crs.transformer(4326, m)
    x1, y1 = t.transform(lon1, lat1)
    x2, y2 = t.transform(lon2, lat2)
    planar = np.hypot(x2 - x1, y2 - y1)
    geod = crs.geodesic_distance_m(lon1, lat1, lon2, lat2)
    keep = geod > 100.0
    assert np.max(np.abs(planar[keep] / geod[keep] - 1.0)) < 1e-3


def test_transformer_is_cached_and_xy() -> None:
    a = crs.transformer(4326, 4548)
    assert a is crs.transformer("EPSG:4326", "EPSG:4548")
    x, _ = a.transform(117.0, 34.0)
    assert x == pytest.approx(500000.0, abs=0.01)  # on the central meridian
