"""Tests for geo.assign with tiny literal geometries near lon 117, lat 34 (metres matter).

At lat 34, 0.001 deg of longitude is 92.39 m and 0.001 deg of latitude is 110.9 m.
"""

from __future__ import annotations

import json
import pickle

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import Polygon, box

from geo.assign import (
    BoundaryError,
    BoundaryIndex,
    HierarchyError,
    Method,
    assign,
    check_hierarchy,
    lookup,
)
from geo.crs import CoordinateError, geodesic_distance_m

X0, Y0 = 117.0, 34.0
S = 0.01  # square side in degrees: ~924 m x ~1109 m
T1, T2 = "320311001", "320311002"


def _layer(rows: list[tuple[str, str, str | None, object]]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "code": [r[0] for r in rows],
            "name": [f"name-{r[0]}" for r in rows],
            "level": [r[1] for r in rows],
            "parent_code": [r[2] for r in rows],
        },
        geometry=[r[3] for r in rows],
        crs=4326,
    )


@pytest.fixture(scope="module")
def two_squares() -> BoundaryIndex:
    """Townships A (T1) and B (T2) share the edge lon = 117.01; county and city cover both."""
    a = box(X0, Y0, X0 + S, Y0 + S)
    b = box(X0 + S, Y0, X0 + 2 * S, Y0 + S)
    both = box(X0, Y0, X0 + 2 * S, Y0 + S)
    gdf = _layer(
        [
            ("320300", "city", None, both),
            ("320311", "county", "320300", both),
            (T2, "township", "320311", b),  # listed first: the tie-break must not use order
            (T1, "township", "320311", a),
        ]
    )
    return BoundaryIndex.build(gdf, "v-test")


def _one(index: BoundaryIndex, lon: float, lat: float, **kw: float) -> dict:
    return assign(index, [lon], [lat], **kw).iloc[0].to_dict()


def test_index_exposes_version_levels_names_bounds(two_squares: BoundaryIndex) -> None:
    assert two_squares.version == "v-test"
    assert [lv.value for lv in two_squares.levels] == ["city", "county", "township"]
    assert two_squares.names[T1] == f"name-{T1}"
    assert two_squares.bounds == pytest.approx((X0, Y0, X0 + 2 * S, Y0 + S))
    assert two_squares.metric_crs.to_epsg() == 4548


def test_inside_fills_the_hierarchy(two_squares: BoundaryIndex) -> None:
    r = _one(two_squares, X0 + 0.005, Y0 + 0.005)
    assert (r["city_code"], r["county_code"], r["township_code"]) == ("320300", "320311", T1)
    assert r["method"] == Method.inside and r["reason"] == "inside"
    assert r["distance_m"] == 0.0 and r["candidates"] == [] and not r["review"]


def test_point_on_outer_boundary_is_inside(two_squares: BoundaryIndex) -> None:
    r = _one(two_squares, X0, Y0 + 0.005)  # west edge of A, 924 m from B
    assert r["township_code"] == T1 and r["method"] == Method.inside and not r["review"]
    corner = _one(two_squares, X0, Y0)  # a vertex
    assert corner["township_code"] == T1 and corner["method"] == Method.inside


def test_shared_border_goes_to_lowest_code(two_squares: BoundaryIndex) -> None:
    r = _one(two_squares, X0 + S, Y0 + 0.005)
    assert r["township_code"] == T1 and r["county_code"] == "320311"
    assert r["method"] == Method.border
    assert r["reason"] == f"on shared border of {T1} and {T2}; tie-break: lowest code"
    assert r["review"]
    assert r["candidates"] == [{"code": T1, "distance_m": 0.0}, {"code": T2, "distance_m": 0.0}]
    # A shared vertex on the outer edge, too.
    v = _one(two_squares, X0 + S, Y0)
    assert v["township_code"] == T1 and v["method"] == Method.border


def test_near_border_flags_review_with_ranked_candidates(two_squares: BoundaryIndex) -> None:
    lon = X0 + S + 0.0002  # inside B, 0.0002 deg = 18.5 m east of A
    r = _one(two_squares, lon, Y0 + 0.005)
    expected = geodesic_distance_m(lon, Y0 + 0.005, X0 + S, Y0 + 0.005)
    assert expected == pytest.approx(18.48, abs=0.05)
    assert r["township_code"] == T2 and r["method"] == Method.inside and r["review"]
    assert [c["code"] for c in r["candidates"]] == [T2, T1]
    assert r["candidates"][0]["distance_m"] == 0.0
    assert r["candidates"][1]["distance_m"] == pytest.approx(expected, rel=1e-3)
    # 60 m away is beyond near_border_m=50: no review; a wider radius flags it.
    far = X0 + S + 0.00065
    assert not _one(two_squares, far, Y0 + 0.005)["review"]
    assert _one(two_squares, far, Y0 + 0.005, near_border_m=70.0)["review"]


def test_nearest_within_tolerance(two_squares: BoundaryIndex) -> None:
    lon, lat = X0 - 0.001, Y0 + 0.005  # 92.4 m west of A
    r = _one(two_squares, lon, lat)
    assert r["township_code"] == T1 and r["county_code"] == "320311"
    assert r["method"] == Method.nearest
    ref = geodesic_distance_m(lon, lat, X0, lat)
    assert r["distance_m"] == pytest.approx(ref, rel=1e-3)
    assert r["reason"] == f"nearest jurisdiction within 200 m ({r['distance_m']:.1f} m)"
    assert not r["review"]


def test_outside_tolerance_is_unassigned_not_dropped(two_squares: BoundaryIndex) -> None:
    lon = np.array([X0 + 0.005, X0 - 0.003, 100.0])  # inside, 277 m out, far away
    lat = np.array([Y0 + 0.005, Y0 + 0.005, 20.0])
    df = assign(two_squares, lon, lat)
    assert len(df) == 3
    assert df["method"].tolist() == [Method.inside, Method.unassigned, Method.unassigned]
    out = df.iloc[1]
    assert out["township_code"] is None and out["county_code"] is None and out["city_code"] is None
    assert out["reason"] == "outside service area" and np.isnan(out["distance_m"])
    assert out["review"]
    # A larger tolerance reaches it.
    wider = _one(two_squares, X0 - 0.003, Y0 + 0.005, tolerance_m=300.0)
    assert wider["method"] == Method.nearest and wider["township_code"] == T1


def test_nearest_tie_goes_to_lowest_code(two_squares: BoundaryIndex) -> None:
    # Due south of the shared edge: equally far from A and B.
    r = _one(two_squares, X0 + S, Y0 - 0.0005)
    assert r["method"] == Method.nearest and r["township_code"] == T1
    assert r["distance_m"] == pytest.approx(55.45, rel=2e-3)


def test_nested_squares_and_hole() -> None:
    """County C1 is a square with a square hole; township-less layer; C2 fills the hole."""
    outer = Polygon(
        [(X0, Y0), (X0 + S, Y0), (X0 + S, Y0 + S), (X0, Y0 + S)],
        [
            [
                (X0 + 0.003, Y0 + 0.003),
                (X0 + 0.007, Y0 + 0.003),
                (X0 + 0.007, Y0 + 0.007),
                (X0 + 0.003, Y0 + 0.007),
            ]
        ],
    )
    inner = box(X0 + 0.003, Y0 + 0.003, X0 + 0.007, Y0 + 0.007)
    gdf = _layer([("320399", "county", None, outer), ("320398", "county", None, inner)])
    idx = BoundaryIndex.build(gdf, "v")
    df = assign(idx, [X0 + 0.005, X0 + 0.001, X0 + 0.003], [Y0 + 0.005, Y0 + 0.001, Y0 + 0.005])
    assert df["county_code"].tolist() == ["320398", "320399", "320398"]
    assert df["method"].tolist() == [Method.inside, Method.inside, Method.border]
    assert df["township_code"].tolist() == [None, None, None]  # no township level: stops at county
    # Without the filler, the hole is empty: its centre is 185 m from the ring -> nearest.
    idx2 = BoundaryIndex.build(gdf.iloc[[0]], "v2")
    r = _one(idx2, X0 + 0.005, Y0 + 0.005)
    assert r["method"] == Method.nearest and r["county_code"] == "320399"
    assert r["distance_m"] == pytest.approx(184.8, rel=2e-3)
    assert _one(idx2, X0 + 0.005, Y0 + 0.005, tolerance_m=150.0)["method"] == Method.unassigned


def test_county_code_is_always_the_townships_parent() -> None:
    """The township decides its ancestors even where county polygons disagree."""
    town = box(X0, Y0, X0 + S, Y0 + S)
    gdf = _layer(
        [
            ("320301", "county", None, box(X0 + 0.5, Y0, X0 + 0.6, Y0 + 0.1)),  # far away
            ("320302", "county", None, box(X0 - 0.1, Y0 - 0.1, X0 + 0.1, Y0 + 0.1)),  # covers
            ("320301001", "township", "320301", town),
        ]
    )
    idx = BoundaryIndex.build(gdf, "v")
    r = _one(idx, X0 + 0.005, Y0 + 0.005)
    assert r["township_code"] == "320301001" and r["county_code"] == "320301"


def test_falls_back_to_upper_level_outside_township_coverage() -> None:
    gdf = _layer(
        [
            ("320311", "county", None, box(X0, Y0, X0 + 0.1, Y0 + 0.1)),
            ("320311001", "township", "320311", box(X0, Y0, X0 + S, Y0 + S)),
        ]
    )
    idx = BoundaryIndex.build(gdf, "v")
    r = _one(idx, X0 + 0.05, Y0 + 0.05)
    assert r["township_code"] is None and r["county_code"] == "320311"
    assert r["method"] == Method.inside and r["review"]
    assert r["reason"] == "no township within 200 m; county: inside"


def test_check_hierarchy_errors() -> None:
    sq = box(X0, Y0, X0 + S, Y0 + S)
    with pytest.raises(HierarchyError, match="duplicate codes: 320311"):
        check_hierarchy(_layer([("320311", "county", None, sq), ("320311", "county", None, sq)]))
    with pytest.raises(HierarchyError, match=r"unknown level.*320311='district'"):
        check_hierarchy(_layer([("320311", "district", None, sq)]))
    with pytest.raises(HierarchyError, match=r"320311001 \(parent '320399' is not a county"):
        check_hierarchy(
            _layer([("320311", "county", None, sq), ("320311001", "township", "320399", sq)])
        )
    with pytest.raises(HierarchyError, match=r"320311002 \(parent 320311001 is a township"):
        check_hierarchy(
            _layer(
                [("320311001", "township", None, sq), ("320311002", "township", "320311001", sq)]
            )
        )
    with pytest.raises(HierarchyError, match=r"320311 \(parent None is not a city"):
        check_hierarchy(_layer([("320300", "city", None, sq), ("320311", "county", None, sq)]))
    # A consistent layer passes; a parent outside the layer is fine when that level is absent.
    check_hierarchy(_layer([("320311001", "township", "320311", sq)]))


def test_build_rejects_bad_geometry_and_columns() -> None:
    bad = _layer([("320311", "county", None, shapely.Point(X0, Y0))])
    with pytest.raises(BoundaryError, match=r"\['320311'\] are not non-empty Polygon"):
        BoundaryIndex.build(bad, "v")
    with pytest.raises(BoundaryError, match=r"missing.*parent_code"):
        BoundaryIndex.build(bad.drop(columns=["parent_code"]), "v")


def test_bad_coordinates_raise(two_squares: BoundaryIndex) -> None:
    with pytest.raises(CoordinateError, match="lat: nan at index 1"):
        assign(two_squares, [117.0, 117.0], [34.0, float("nan")])
    with pytest.raises(ValueError, match="tolerance_m: -1"):
        assign(two_squares, [117.0], [34.0], tolerance_m=-1)


def test_lookup_matches_assign(two_squares: BoundaryIndex) -> None:
    pts = [
        (X0 + 0.005, Y0 + 0.005),
        (X0 + S, Y0 + 0.005),
        (X0 + S + 0.0002, Y0 + 0.005),
        (X0 - 0.001, Y0 + 0.005),
        (X0 - 0.01, Y0 + 0.005),
    ]
    df = assign(two_squares, [p[0] for p in pts], [p[1] for p in pts])
    for (lon, lat), (_, row) in zip(pts, df.iterrows(), strict=True):
        d = lookup(two_squares, lon, lat)
        assert d["version"] == "v-test"
        assert (d["township"] or {}).get("code") == row["township_code"]
        assert (d["county"] or {}).get("code") == row["county_code"]
        assert d["method"] == row["method"] and d["reason"] == row["reason"]
        assert d["candidates"] == row["candidates"] and d["review"] == row["review"]
        assert d["distance_m"] == pytest.approx(row["distance_m"], nan_ok=True)
    d = lookup(two_squares, X0 + 0.005, Y0 + 0.005)
    assert d["township"] == {"code": T1, "name": f"name-{T1}"}
    assert d["city"] == {"code": "320300", "name": "name-320300"}


# ---------------------------------------------------------------- brute force


def _messy_layer() -> gpd.GeoDataFrame:
    """Shared borders (incl. diagonal ones), a hole filled by another polygon, an empty hole."""
    polys: list[tuple[str, object]] = []
    k = 0
    for i in range(4):
        for j in range(4):
            x, y = X0 + i * S, Y0 + j * S
            if (i + j) % 3 == 0:  # split the square along a diagonal
                polys.append((f"3203110{k:02d}", Polygon([(x, y), (x + S, y), (x + S, y + S)])))
                k += 1
                polys.append((f"3203110{k:02d}", Polygon([(x, y), (x + S, y + S), (x, y + S)])))
            elif (i, j) == (1, 2):
                hole = [(x + 0.002, y + 0.002), (x + 0.0071, y + 0.0033), (x + 0.004, y + 0.008)]
                polys.append((f"3203110{k:02d}", Polygon(box(x, y, x + S, y + S).exterior, [hole])))
                k += 1
                polys.append((f"3203110{k:02d}", Polygon(hole)))
            elif (i, j) == (2, 1):
                hole = [(x + 0.003, y + 0.003), (x + 0.006, y + 0.003), (x + 0.006, y + 0.006)]
                polys.append((f"3203110{k:02d}", Polygon(box(x, y, x + S, y + S).exterior, [hole])))
            else:
                polys.append((f"3203110{k:02d}", box(x, y, x + S, y + S)))
            k += 1
    rng = np.random.default_rng(3)
    codes = [c for c, _ in polys]
    rng.shuffle(codes)  # codes unrelated to position or order
    return _layer([(c, "township", None, g) for c, (_, g) in zip(codes, polys, strict=True)])


def _brute(
    gdf: gpd.GeoDataFrame, lon: np.ndarray, lat: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    geoms = gdf.geometry.values
    codes = gdf["code"].to_numpy()
    cov = np.stack([shapely.covers(g, shapely.points(lon, lat)) for g in geoms], axis=1)
    order = np.argsort(codes)
    first = np.argmax(cov[:, order], axis=1)
    best = np.where(cov.any(axis=1), codes[order][first], None)
    return np.asarray(best), np.asarray(cov.sum(axis=1))


@pytest.mark.parametrize("max_cells", [64, 4096, 1 << 20])
def test_identical_to_brute_force_covers(max_cells: int) -> None:
    gdf = _messy_layer()
    rng = np.random.default_rng(max_cells)
    lon = rng.uniform(X0 - 0.002, X0 + 4 * S + 0.002, 20_000)
    lat = rng.uniform(Y0 - 0.002, Y0 + 4 * S + 0.002, 20_000)
    verts = shapely.get_coordinates(shapely.boundary(gdf.geometry.values))
    edges = shapely.line_interpolate_point(
        shapely.boundary(gdf.geometry.values)[rng.integers(0, len(gdf), 3000)],
        rng.uniform(0, 1, 3000),
        normalized=True,
    )
    ex = shapely.get_coordinates(edges)
    # Points exactly on grid lines and on round coordinates hit cell edges, too.
    grid = np.array([[X0 + S * a / 4, Y0 + S * b / 4] for a in range(17) for b in range(17)])
    lon = np.concatenate([lon, verts[:, 0], ex[:, 0], grid[:, 0]])
    lat = np.concatenate([lat, verts[:, 1], ex[:, 1], grid[:, 1]])
    idx = BoundaryIndex.build(gdf, "v", max_cells=max_cells)
    df = assign(idx, lon, lat, tolerance_m=0.0)
    best, count = _brute(gdf, lon, lat)
    assert df["township_code"].tolist() == best.tolist()
    expected_method = np.where(count >= 2, "border", np.where(count == 1, "inside", "unassigned"))
    assert df["method"].astype(str).tolist() == expected_method.tolist()
    assert (count >= 2).sum() > 100 and (count == 0).sum() > 100  # the hard cases are exercised


# ---------------------------------------------------------------- lookup == assign, property-style


def _lookup_row(d: dict) -> dict:
    """A lookup() answer in assign()'s column layout."""
    return {
        "city_code": (d["city"] or {}).get("code"),
        "county_code": (d["county"] or {}).get("code"),
        "township_code": (d["township"] or {}).get("code"),
        "method": d["method"],
        "reason": d["reason"],
        "distance_m": d["distance_m"],
        "candidates": d["candidates"],
        "review": d["review"],
    }


def assert_lookup_equals_assign(
    index: BoundaryIndex, lon: np.ndarray, lat: np.ndarray, **kw: float
) -> pd.DataFrame:
    """Every field of lookup() equals assign() on every point, exactly (floats bit for bit).

    Shared with the real-data test. Returns assign()'s frame so callers can check that the
    points exercised the hard cases.
    """
    df = assign(index, lon, lat, **kw)
    expected = df.to_dict("records")
    bad = []
    for i, (x, y) in enumerate(zip(lon.tolist(), lat.tolist(), strict=True)):
        got = _lookup_row(lookup(index, x, y, **kw))
        exp = expected[i]
        same = all(
            got[k] == exp[k] or (k == "distance_m" and np.isnan(got[k]) and np.isnan(exp[k]))
            for k in got
        )
        # Same types as well: a Method, a str reason, plain lists of dicts with float distances.
        same = same and type(got["method"]) is type(exp["method"]) and all(
            type(c["distance_m"]) is float for c in got["candidates"]
        )
        if not same:
            bad.append((i, x, y, got, exp))
    assert not bad, f"{len(bad)} of {len(lon)} lookups differ from assign, first: {bad[:2]}"
    return df


def _probe_points(
    gdf: gpd.GeoDataFrame, n: int, rng: np.random.Generator, max_offset_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform points over the (padded) extent, vertices, points on edges, and points offset
    from edges by up to ``max_offset_deg`` (so: on, just inside / outside, near borders)."""
    geoms = gdf.geometry.values
    b = gdf.total_bounds
    pad = 3 * max_offset_deg
    ux = rng.uniform(b[0] - pad, b[2] + pad, n)
    uy = rng.uniform(b[1] - pad, b[3] + pad, n)
    rings = shapely.boundary(geoms)
    verts = shapely.get_coordinates(rings)
    verts = verts[rng.integers(0, len(verts), n // 4)]
    on = shapely.get_coordinates(
        shapely.line_interpolate_point(
            rings[rng.integers(0, len(geoms), n)], rng.uniform(0, 1, n), normalized=True
        )
    )
    # Offsets on a log scale: centimetres to max_offset_deg.
    off = rng.normal(size=(n, 2)) * np.exp(rng.uniform(np.log(1e-7), np.log(max_offset_deg), n))[
        :, None
    ]
    lon = np.concatenate([ux, verts[:, 0], on[:, 0], on[:, 0] + off[:, 0]])
    lat = np.concatenate([uy, verts[:, 1], on[:, 1], on[:, 1] + off[:, 1]])
    return lon, lat


def _hierarchy_layer() -> gpd.GeoDataFrame:
    """City > 2 counties > townships that leave gaps (fallback to county / city), an overlap
    (broken layer) and a river gap between townships (nearest)."""
    c1 = box(X0, Y0, X0 + 2 * S, Y0 + 2 * S)
    c2 = box(X0 + 2 * S, Y0, X0 + 4 * S, Y0 + 2 * S)
    city = box(X0 - S, Y0 - S, X0 + 5 * S, Y0 + 3 * S)
    return _layer(
        [
            ("320300", "city", None, city),
            ("320311", "county", "320300", c1),
            ("320312", "county", "320300", c2),
            ("320311001", "township", "320311", box(X0, Y0, X0 + S, Y0 + S)),
            ("320311002", "township", "320311", box(X0 + S, Y0, X0 + 2 * S, Y0 + S)),
            # overlaps 320311001 by 0.002 deg (a broken layer): points there are 'overlap'
            ("320311003", "township", "320311", box(X0, Y0 + S - 0.002, X0 + S, Y0 + 2 * S)),
            # 0.001 deg (~92 m) river gap to the next township
            ("320312001", "township", "320312", box(X0 + 2 * S + 0.001, Y0, X0 + 3 * S, Y0 + S)),
            (
                "320312002",
                "township",
                "320312",
                Polygon([(X0 + 3 * S, Y0), (X0 + 4 * S, Y0), (X0 + 3.5 * S, Y0 + 1.5 * S)]),
            ),
        ]
    )


@pytest.mark.parametrize(
    "kw",
    [{}, {"tolerance_m": 500.0, "near_border_m": 120.0}, {"tolerance_m": 0.0, "near_border_m": 0.0}],
    ids=["defaults", "wide", "zero"],
)
@pytest.mark.parametrize("layer", ["messy", "hierarchy"])
def test_lookup_equals_assign_on_random_and_border_points(layer: str, kw: dict) -> None:
    gdf = _messy_layer() if layer == "messy" else _hierarchy_layer()
    rng = np.random.default_rng(17)
    lon, lat = _probe_points(gdf, 800, rng, max_offset_deg=0.004)
    for max_cells in (64, 1 << 20):  # coarse grid: few pure cells; fine grid: many
        idx = BoundaryIndex.build(gdf, "v", max_cells=max_cells)
        df = assert_lookup_equals_assign(idx, lon, lat, **kw)
        methods = df["method"].value_counts()
        assert methods.get(Method.border, 0) > 50 and methods.get(Method.inside, 0) > 500
        assert methods.get(Method.unassigned, 0) > 20
        if kw.get("tolerance_m", 200.0) > 0:
            assert methods.get(Method.nearest, 0) > 20
        if kw.get("near_border_m", 50.0) > 0:
            assert (df["candidates"].map(len) >= 2).sum() > 100
    if layer == "hierarchy":
        # Fallbacks to the county and city levels, and overlaps, were exercised too.
        reasons = df["reason"].astype(str)
        assert reasons.str.contains("; county: ").sum() > 5
        assert reasons.str.contains("; city: ").sum() > 5
        assert reasons.str.startswith("on overlap of").sum() > 5


def test_rows_without_candidates_share_one_read_only_empty_list(two_squares: BoundaryIndex) -> None:
    df = assign(two_squares, [X0 + 0.005, X0 + 0.006, X0 + S], [Y0 + 0.005, Y0 + 0.005, Y0 + 0.005])
    a, b, c = df["candidates"].tolist()
    assert a == [] and isinstance(a, list) and a is b and len(c) == 2
    assert json.dumps(a) == "[]" and pickle.loads(pickle.dumps(a)) == []
    for mutate in (lambda v: v.append(1), lambda v: v.extend([1]), lambda v: v.__iadd__([1])):
        with pytest.raises(TypeError, match="read-only"):
            mutate(a)
    assert b == [] and list(a) == [] and list(a) is not a  # a copy is an ordinary list
    c.append({"code": "x"})  # rows with candidates own their list
    assert len(df["candidates"].iloc[2]) == 3 and df["candidates"].iloc[0] == []


def test_scalar_metres_per_degree_is_bit_identical_to_the_array_version() -> None:
    """lookup() and assign() measure near-border distances with these scales: any last-bit
    difference could flip a rounding of a candidate's distance or a radius test."""
    from geo.assign import _metres_per_degree, _metres_per_degree1

    lat = np.random.default_rng(5).uniform(-89.9, 89.9, 50_000)
    lat[:7] = [0.0, -0.0, 34.0, 45.0, 89.0, -89.0, 1e-300]
    m_lon, m_lat = _metres_per_degree(lat)
    pairs = [_metres_per_degree1(v) for v in lat.tolist()]
    assert [p[0] for p in pairs] == m_lon.tolist()
    assert [p[1] for p in pairs] == m_lat.tolist()
