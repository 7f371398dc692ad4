"""Validation report: one tiny literal layer per finding, and the real reference layers."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pytest
from shapely.geometry import LineString, Polygon, box

from layers.boundary_review import validate_frame
from layers.jurisdictions import _to_storage
from tests.conftest import CITY, COUNTIES, SHARED_DATA, TOWNSHIPS

BOUNDARIES = SHARED_DATA / "boundaries"


def frame(rows: list[tuple[str, str, str, str | None, object]]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"code": [r[0] for r in rows], "name": [r[1] for r in rows],
                             "level": [r[2] for r in rows], "parent_code": [r[3] for r in rows]},
                            geometry=[r[4] for r in rows], crs=4326)


def tiny(extra: list[tuple[str, str, str, str | None, object]] | None = None,
         drop: tuple[str, ...] = ()) -> gpd.GeoDataFrame:
    rows: list[tuple[str, str, str, str | None, object]] = [("320000", "市", "city", None, CITY)]
    rows += [(c, f"县{c}", "county", "320000", g) for c, g in COUNTIES.items()]
    rows += [(c, f"镇{c}", "township", p, g) for c, (p, g) in TOWNSHIPS.items()]
    return frame([r for r in rows if r[0] not in drop] + (extra or []))


def kinds(report, severity: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return report.counts().get(severity, {})


def test_the_tiny_layer_is_clean() -> None:
    _, r = validate_frame(tiny())
    assert r.ok and r.findings == [], r.to_text()


def test_invalid_geometry_is_an_error_with_location_and_reason_and_repair_is_reported() -> None:
    bowtie = Polygon([(117.30, 34.00), (117.32, 34.02), (117.32, 34.00), (117.30, 34.02)])
    _, r = validate_frame(frame([("320009", "坏县", "county", None, bowtie)]))
    (f,) = r.errors
    assert f.kind == "invalid_geometry" and "Self-intersection" in f.message
    assert (round(f.lon, 3), round(f.lat, 3)) == (117.31, 34.01)
    fixed, r2 = validate_frame(frame([("320009", "坏县", "county", None, bowtie)]), repair=True)
    assert r2.ok and [f.kind for f in r2.repairs] == ["invalid_geometry"]
    assert fixed.geometry.iloc[0].is_valid


def test_overlap_between_siblings_above_the_threshold_has_area_and_place() -> None:
    # Township 320001001 reaches 0.005° (≈ 460 m) into its northern neighbour: ≈ 4.2 km² overlap.
    layer = tiny(drop=("320001001",), extra=[("320001001", "甲一镇", "township", "320001",
                                              box(117.00, 34.00, 117.05, 34.055))])
    _, r = validate_frame(layer)
    (f,) = r.of_kind("overlap")
    assert f.severity == "error" and sorted(f.codes) == ["320001001", "320001002"]
    assert 2.5e6 < f.area_m2 < 2.7e6  # 0.05° × 0.005° ≈ 4,610 m × 555 m
    assert 117.0 < f.lon < 117.05 and 34.05 < f.lat < 34.055
    _, quiet = validate_frame(layer, min_area_m2=3e6)
    assert not quiet.of_kind("overlap")


def test_sliver_gap_inside_the_parent_is_a_warning() -> None:
    layer = tiny(drop=("320002002",), extra=[("320002002", "乙二镇", "township", "320002",
                                              box(117.10, 34.051, 117.20, 34.10))])
    _, r = validate_frame(layer)
    assert r.ok
    (g,) = r.of_kind("gap")
    assert g.severity == "warning" and 1.0e6 < g.area_m2 < 1.1e6  # 9.2 km × 111 m
    assert 34.05 < g.lat < 34.051 and "320002002" in g.codes


def test_gap_between_siblings_without_a_parent_polygon() -> None:
    ring = box(117.0, 34.0, 117.2, 34.2).difference(box(117.05, 34.05, 117.15, 34.15))
    layer = frame([("320001", "甲", "county", "320000", ring.intersection(box(117.0, 34.0, 117.1, 34.2))),
                   ("320002", "乙", "county", "320000", ring.intersection(box(117.1, 34.0, 117.2, 34.2)))])
    _, r = validate_frame(layer)
    (g,) = r.of_kind("gap")
    assert 1.0e8 < g.area_m2 < 1.1e8 and abs(g.lon - 117.1) < 0.05


def test_child_not_nested_in_its_parent_reports_the_share_outside() -> None:
    layer = tiny(drop=("320002001",), extra=[("320002001", "乙一镇", "township", "320002",
                                              box(117.10, 33.99, 117.20, 34.05))])
    _, r = validate_frame(layer)
    nested = r.of_kind("not_nested")
    assert [f.severity for f in nested] == ["warning"] and "16.67%" in nested[0].message
    assert nested[0].lat < 34.0
    wrong_parent = tiny(drop=("320002001",), extra=[("320002001", "乙一镇", "township", "320001",
                                                     box(117.10, 34.00, 117.20, 34.05))])
    _, r2 = validate_frame(wrong_parent)
    assert [f.severity for f in r2.of_kind("not_nested")] == ["error"]


def test_codes_parents_levels_and_geometry_types() -> None:
    layer = tiny(extra=[
        ("320001001", "重复", "township", "320001", box(117.30, 34.0, 117.31, 34.01)),
        ("", "无码", "township", "320001", box(117.32, 34.0, 117.33, 34.01)),
        ("320001009", "无父", "township", "320099", box(117.34, 34.0, 117.35, 34.01)),
        ("320001010", "缺父", "township", None, box(117.36, 34.0, 117.37, 34.01)),
        ("320001011", "错级", "township", "320001001", box(117.38, 34.0, 117.39, 34.01)),
        ("320001012", "怪级", "village", "320001", box(117.40, 34.0, 117.41, 34.01)),
        ("320001013", "空", "township", "320001", Polygon()),
        ("320001014", "线", "township", "320001", LineString([(117.42, 34.0), (117.43, 34.01)])),
        ("320001015", "", "township", "320001", box(117.44, 34.0, 117.45, 34.01)),
    ])
    _, r = validate_frame(layer)
    got = kinds(r, "error")
    for kind in ("duplicate_code", "missing_code", "unknown_parent", "missing_parent", "level_mixup",
                 "unknown_level", "empty_geometry", "wrong_geometry_type", "missing_name"):
        assert got.get(kind, 0) >= 1, (kind, r.to_text())
    assert not r.ok


def test_a_feature_of_another_level_among_siblings_is_a_mixup() -> None:
    # The city polygon imported again as a county: it holds all of both counties.
    layer = tiny(extra=[("320300", "市本级", "county", "320000", CITY)])
    _, r = validate_frame(layer)
    mix = r.of_kind("level_mixup")
    assert {tuple(sorted(f.codes)) for f in mix} == {("320001", "320300"), ("320002", "320300")}
    assert all(f.severity == "error" for f in mix)


def test_implausible_area_and_mixed_code_lengths_are_warnings() -> None:
    layer = frame([("320001", "甲", "county", None, box(117.0, 34.0, 117.001, 34.001)),
                   ("3200020", "乙", "county", None, box(117.1, 34.0, 117.2, 34.1))])
    _, r = validate_frame(layer)
    assert r.ok
    assert kinds(r, "warning") == {"implausible_area": 1, "mixed_code_length": 1}
    js = json.loads(json.dumps(r.to_dict()))
    assert js["warnings"] == 2 and r.of_kind("implausible_area")[0].lon is not None


def test_self_parent_is_a_warning_without_the_level_above() -> None:
    _, r = validate_frame(frame([("441900", "东莞市", "county", "441900", box(113.5, 22.8, 114.2, 23.1))]))
    assert r.ok and [f.kind for f in r.warnings] == ["self_parent"]


# ------------------------------------------------------------------------------ real data


def _read(name: str, level: str, datum: str, parent: bool = True) -> gpd.GeoDataFrame:
    path = BOUNDARIES / name
    if not path.exists():
        pytest.skip(f"reference data {path} absent")
    g = gpd.read_file(path, engine="pyogrio")
    geoms, _ = _to_storage(g, datum)
    return gpd.GeoDataFrame({"code": g["adcode"].astype(str), "name": g["name"], "level": level,
                             "parent_code": g["parent_adcode"].astype(str) if parent else None},
                            geometry=geoms, crs=4326)


def _layer(*parts: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    import pandas as pd

    return gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), geometry="geometry", crs=4326)


@pytest.mark.parametrize(("city", "counties", "datum"), [
    ("xuzhou_city.geojson", "xuzhou_counties.geojson", "gcj02"),
    ("xuzhou_city_tianditu_cgcs2000.geojson", "xuzhou_counties_tianditu_cgcs2000.geojson", "cgcs2000"),
])
def test_real_xuzhou_layers_validate_clean(city: str, counties: str, datum: str) -> None:
    layer = _layer(_read(city, "city", datum, parent=False), _read(counties, "county", datum))
    _, r = validate_frame(layer, layer=counties)
    assert r.ok and not r.warnings, r.to_text()


def test_real_jiangsu_layers_validate_clean() -> None:
    layer = _layer(_read("jiangsu_cities.geojson", "city", "gcj02", parent=False),
                   _read("jiangsu_counties.geojson", "county", "gcj02"))
    _, r = validate_frame(layer, layer="jiangsu")
    assert r.ok and not r.warnings, r.to_text()
    _, t = validate_frame(_read("jiangsu_counties_tianditu_cgcs2000.geojson", "county", "cgcs2000"))
    assert t.ok, t.to_text()


def test_simplified_national_layer_reports_its_known_overlaps() -> None:
    layer = _read("china_counties_simplified.geojson", "county", "gcj02", parent=False)
    _, r = validate_frame(layer, layer="china")
    overlaps = r.of_kind("overlap")
    # SOURCES.md: 6,432 neighbour pairs overlap by more than 1 ha (largest 4.0 km²).
    assert 6000 <= len(overlaps) + len(r.of_kind("level_mixup")) <= 7000
    assert max(f.area_m2 or 0 for f in overlaps) < 4.5e6
    assert not r.ok and r.of_kind("gap")
    assert all(f.lon is not None for f in overlaps[:50])


def test_file_paths_are_read_relative_to_the_shared_data() -> None:
    assert isinstance(BOUNDARIES, Path)
