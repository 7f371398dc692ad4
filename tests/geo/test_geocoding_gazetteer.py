"""Gazetteer upgrade of admin matches to named-place points, and offset phrases."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pyproj import Geod

from geo.geocoding import (
    AdminIndex,
    Gazetteer,
    GazetteerError,
    Precision,
    geocode_address,
)
from geo.geocoding.gazetteer import parse_offset, shift_lonlat

ADMIN = AdminIndex.from_records(
    [
        {"code": "100000", "name": "甲省", "level": "province", "parent_code": None},
        {"code": "100100", "name": "乙市", "level": "city", "parent_code": "100000"},
        {"code": "100101", "name": "东山区", "level": "county", "parent_code": "100100"},
        {"code": "100102", "name": "西河县", "level": "county", "parent_code": "100100"},
        {"code": "100101001", "name": "张集镇", "level": "township", "parent_code": "100101"},
        {"code": "100101002", "name": "柳新镇", "level": "township", "parent_code": "100101"},
        {"code": "100102001", "name": "王集镇", "level": "township", "parent_code": "100102"},
    ]
)

PLACES = [
    {
        "id": "v1",
        "name": "马庄村",
        "kind": "village",
        "lon": 117.0,
        "lat": 34.0,
        "admin_code": "100101002",
    },
    {
        "id": "v2",
        "name": "马庄村",
        "kind": "village",
        "lon": 117.5,
        "lat": 34.5,
        "admin_code": "100102001",
    },
    {
        "id": "v3",
        "name": "马庄",
        "kind": "village",
        "lon": 117.9,
        "lat": 34.9,
        "admin_code": "100101001",
    },
    {
        "id": "e1",
        "name": "徐工集团",
        "kind": "enterprise",
        "lon": 117.2,
        "lat": 34.2,
        "admin_code": "100101",
        "aliases": "徐工|XCMG",
    },
]


@pytest.fixture(scope="module")
def gaz() -> Gazetteer:
    return Gazetteer.from_records(PLACES)


def test_place_inside_township_gives_poi_and_offset(gaz: Gazetteer) -> None:
    r = geocode_address("东山区柳新镇马庄村东200米", ADMIN, gaz)
    assert r.precision is Precision.POI
    assert r.place == "马庄村"
    assert r.code == "100101002"
    assert r.matched == ("东山区", "柳新镇", "马庄村")
    assert r.offset_m == pytest.approx((200.0, 0.0))
    # Independent check: geodesic 200 m due east of (117.0, 34.0) on WGS84.
    lon, lat, _ = Geod(ellps="WGS84").fwd(117.0, 34.0, 90.0, 200.0)
    # A geodesic heading east drifts south by ~2 mm over 200 m; 1e-7 degrees is about 1 cm.
    assert r.lon == pytest.approx(lon, abs=1e-7)
    assert r.lat == pytest.approx(lat, abs=1e-7)
    # admin 1 - 0.05 (province) - 0.10 (city) = 0.85, + 0.10 for the place
    assert r.confidence == pytest.approx(0.95)
    assert r.remainder == "东200米"


def test_place_lookup_restricted_to_resolved_unit(gaz: Gazetteer) -> None:
    # 张集镇 holds 马庄 (not 马庄村): longest match inside scope is 马庄.
    r = geocode_address("东山区张集镇马庄村", ADMIN, gaz)
    assert r.place == "马庄"
    assert (r.lon, r.lat) == (117.9, 34.9)
    # In 西河县 only v2 lies within; its township is filled in from the place.
    w = geocode_address("西河县马庄村", ADMIN, gaz)
    assert (w.lon, w.lat) == (117.5, 34.5)
    assert w.code == "100102001"
    assert w.codes["township"] == "100102001"


def test_ambiguous_place_is_not_upgraded(gaz: Gazetteer) -> None:
    # Both 马庄村 lie within 乙市.
    r = geocode_address("乙市马庄村", ADMIN, gaz)
    assert r.precision is Precision.CITY
    assert r.lon is None
    assert {c.code for c in r.candidates if c.level == "poi"} == {"v1", "v2"}


def test_place_without_admin_context(gaz: Gazetteer) -> None:
    r = geocode_address("XCMG西门", ADMIN, gaz)
    assert r.precision is Precision.POI
    assert r.place == "徐工集团"
    assert r.confidence == pytest.approx(0.60)
    assert r.codes["county"] == "100101"
    assert r.offset_m is None
    # No gazetteer: same address stays unrecognised.
    assert geocode_address("XCMG西门", ADMIN).precision is Precision.NONE


def test_no_place_leaves_result_unchanged(gaz: Gazetteer) -> None:
    before = ADMIN.resolve("东山区柳新镇李庄村")
    assert gaz.refine(before, ADMIN) == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("东200米", (200.0, 0.0)),
        ("北侧300m", (0.0, 300.0)),
        ("向西约1.5公里处", (-1500.0, 0.0)),
        ("西南1km", (-1000 * math.sqrt(0.5), -1000 * math.sqrt(0.5))),
        ("附近", None),
        ("200米", None),
    ],
)
def test_parse_offset(text: str, expected: tuple[float, float] | None) -> None:
    got = parse_offset(text)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_shift_matches_geodesic_north() -> None:
    lon, lat = shift_lonlat(117.2, 34.3, 0.0, 1000.0)
    g_lon, g_lat, _ = Geod(ellps="WGS84").fwd(117.2, 34.3, 0.0, 1000.0)
    assert lon == pytest.approx(g_lon, abs=1e-9)
    assert lat == pytest.approx(g_lat, abs=1e-8)  # ~1 mm


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lon": 200}, "'lon'"),
        ({"lat": "abc"}, "'lat'"),
        ({"kind": "shop"}, "allowed: road"),
        ({"admin_code": ""}, "'admin_code'"),
    ],
)
def test_bad_place_records(change: dict[str, object], message: str) -> None:
    with pytest.raises(GazetteerError, match=message):
        Gazetteer.from_records([{**PLACES[0], **change}])


def test_from_csv(tmp_path: Path) -> None:
    path = tmp_path / "places.csv"
    path.write_text(
        "id,name,kind,lon,lat,admin_code,aliases\n"
        "m1,柳新监测站,monitoring_point,117.1,34.1,100101002,\n",
        encoding="utf-8",
    )
    gaz = Gazetteer.from_csv(path)
    assert len(gaz) == 1
    r = geocode_address("柳新镇柳新监测站", ADMIN, gaz)
    assert (r.precision, r.lon, r.lat) == (Precision.POI, 117.1, 34.1)
