"""Gi* hotspots: a planted cluster is found, a random pattern is not, small inputs are flagged."""

from __future__ import annotations

import esda
import geopandas as gpd
import numpy as np
import pytest
import shapely
from libpysal.weights import DistanceBand
from pyproj import Transformer

from geo.hotspots import (
    MIN_FEATURES,
    HotspotInputError,
    grid_hotspots,
    hotspot_layers,
    kernel_density,
    suggest_cell_size,
    township_hotspots,
    township_hotspots_from_counts,
)

CRS = 4527  # CGCS2000 3-degree GK zone 39 (CM 117°E), Xuzhou
# A 20 km square in Xuzhou, in EPSG:4527 metres.
X0, Y0 = 39_500_000.0, 3_760_000.0
SIDE = 20_000.0
TO_LONLAT = Transformer.from_crs(CRS, 4326, always_xy=True)


def lonlat(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lon, lat = TO_LONLAT.transform(x, y)
    return np.asarray(lon), np.asarray(lat)


def uniform(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return X0 + rng.uniform(0, SIDE, n), Y0 + rng.uniform(0, SIDE, n)


def planted(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    bx, by = uniform(rng, 2000)
    # 300 extra leads within 1 km of (5 km, 15 km): about 25 times the background density.
    ang, rad = rng.uniform(0, 2 * np.pi, 300), 1000 * np.sqrt(rng.uniform(0, 1, 300))
    cx, cy = X0 + 5000 + rad * np.cos(ang), Y0 + 15000 + rad * np.sin(ang)
    return lonlat(np.r_[bx, cx], np.r_[by, cy])


def square_townships(n: int = 6, side: float = SIDE) -> gpd.GeoDataFrame:
    """An n x n tiling of the 20 km square: synthetic townships."""
    step = side / n
    i, j = np.divmod(np.arange(n * n), n)
    boxes = shapely.box(X0 + j * step, Y0 + i * step, X0 + (j + 1) * step, Y0 + (i + 1) * step)
    gdf = gpd.GeoDataFrame({"code": [f"T{k:02d}" for k in range(n * n)]}, geometry=boxes, crs=CRS)
    return gdf.to_crs(4326)


def test_grid_finds_planted_cluster_as_99_percent_hot_spot() -> None:
    lon, lat = planted()
    res = grid_hotspots(lon, lat, crs=CRS, cell_size=1000)
    assert res.enough and res.cell_size == 1000
    cells = res.features.to_crs(CRS)
    centre = shapely.points(X0 + 5000, Y0 + 15000)
    at_centre = cells[cells.intersects(centre)]
    assert (at_centre["gi_bin"] == 3).all() and len(at_centre) >= 1
    hot99 = cells[cells["gi_bin"] == 3]
    # Every 99 % hot cell lies within 3 km of the planted centre (no spurious far hot spots).
    assert hot99.distance(centre).max() < 3000
    assert (cells["gi_bin"] > 0).sum() < 40


def random_grid(seed: int) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(seed)
    lon, lat = lonlat(*uniform(rng, 3000))
    res = grid_hotspots(lon, lat, crs=CRS, cell_size=1000, keep_empty=True)
    assert res.enough and len(res.features) == 400
    return res.features


def test_random_pattern_has_no_significant_spot_after_fdr() -> None:
    cells = random_grid(0)
    assert (cells["gi_bin"] == 0).all()
    # Honest: without FDR the same data *would* show spots at 90 %, so FDR is what removes them.
    assert (cells["p"] <= 0.10).sum() > 10


def test_fdr_keeps_false_spots_rare_over_many_random_patterns() -> None:
    # Under complete spatial randomness Benjamini-Hochberg at q = 0.10 lets a pattern show any
    # spot at most about 10 % of the time (measured: 5 of 40 seeds); uncorrected, all 40 would.
    seeds = range(40)
    flagged = [bool((random_grid(s)["gi_bin"] != 0).any()) for s in seeds]
    assert sum(flagged) <= 8


def test_township_hotspots_find_planted_cluster() -> None:
    rng = np.random.default_rng(7)
    bx, by = uniform(rng, 2000)
    # 600 extra leads within 3 km of (5 km, 15 km), spanning about 3 x 3 townships of 2 km.
    ang, rad = rng.uniform(0, 2 * np.pi, 600), 3000 * np.sqrt(rng.uniform(0, 1, 600))
    lon, lat = lonlat(np.r_[bx, X0 + 5000 + rad * np.cos(ang)], np.r_[by, Y0 + 15000 + rad * np.sin(ang)])
    res = township_hotspots(lon, lat, square_townships(10), crs=CRS)
    assert res.enough and res.weights == "queen contiguity"
    assert res.features["count"].sum() == len(lon)  # each lead counted exactly once
    bins = res.features.set_index("code")["gi_bin"]
    # The centre (5 km, 15 km) is row 7, column 2 of the 10 x 10 tiling, code T72.
    assert bins["T72"] == 3
    assert (bins == 3).sum() >= 5 and (bins < 0).sum() == 0
    # Far from the cluster (the bottom-right quarter) nothing is hot.
    far = [f"T{r}{c}" for r in range(5) for c in range(5, 10)]
    assert (bins[far] == 0).all()


def test_fewer_than_30_features_are_flagged() -> None:
    lon, lat = planted()
    towns = square_townships(5)  # 25 townships < 30
    res = township_hotspots(lon, lat, towns, crs=CRS)
    assert not res.enough and "25" in res.message and str(MIN_FEATURES) in res.message
    assert (res.features["gi_bin"] == 0).all()
    res = grid_hotspots(lon[:10], lat[:10], crs=CRS, cell_size=5000)
    assert not res.enough


def test_border_point_counted_once() -> None:
    towns = square_townships(6)
    edge_lon, edge_lat = lonlat(np.array([X0 + SIDE / 6]), np.array([Y0 + 100.0]))
    res = township_hotspots(edge_lon, edge_lat, towns, crs=CRS)
    assert res.features["count"].sum() == 1


def test_bad_input_names_the_field() -> None:
    with pytest.raises(HotspotInputError, match="crs=4326"):
        grid_hotspots([117.0], [34.0], crs=4326)
    with pytest.raises(HotspotInputError, match="index 1"):
        grid_hotspots([117.0, 200.0], [34.0, 34.0])
    with pytest.raises(HotspotInputError, match="cell_size=-5"):
        grid_hotspots([117.0], [34.0], cell_size=-5)


def test_suggested_cell_size_is_extent_bound_for_a_tight_cluster() -> None:
    rng = np.random.default_rng(1)
    x, y = uniform(rng, 100)
    x[:50], y[:50] = X0 + rng.uniform(0, 1, 50), Y0 + rng.uniform(0, 1, 50)
    # Mean NN is dominated by the 1 m cluster; the extent rule (20 km / 50 = 400 m) wins or NN*2.
    cell = suggest_cell_size(x, y)
    assert cell >= 390


def test_kernel_density_peaks_at_the_cluster() -> None:
    lon, lat = planted()
    kde = kernel_density(lon, lat, crs=CRS, bandwidth=500)
    peak = kde.to_crs(CRS).geometry.iloc[int(kde["density"].argmax())]
    assert peak.distance(shapely.Point(X0 + 5000, Y0 + 15000)) < 600
    assert kde["weight"].max() == pytest.approx(1.0)


def test_grid_weights_are_the_distance_band_of_cell_centres() -> None:
    """The stencil weights give esda exactly the z-scores of libpysal's DistanceBand (inclusive)."""
    rng = np.random.default_rng(3)
    x, y = uniform(rng, 600)
    # A far, lonely group of leads: the band must widen so that no cell is an island.
    x[:5], y[:5] = X0 + SIDE + 9000 + rng.uniform(0, 900, 5), Y0 + rng.uniform(0, 900, 5)
    lon, lat = lonlat(x, y)
    res = grid_hotspots(lon, lat, crs=CRS, cell_size=1000)
    cells = res.features
    centres = np.column_stack([X0 // 1000 * 1000 + (cells["col"] + 0.5) * 1000,
                               Y0 // 1000 * 1000 + (cells["row"] + 0.5) * 1000])
    band = float(res.weights.split()[2])
    assert band > 2000  # widened for the lonely group
    w = DistanceBand(centres, threshold=band * 1.0001, binary=True, silence_warnings=True)
    w.transform = "B"
    ref = esda.G_Local(cells["count"].to_numpy(), w, transform="B", star=True, permutations=0)
    assert np.allclose(cells["z"], np.nan_to_num(ref.Zs), atol=1e-9)
    # Without the lonely group: the default band of two cells, twelve neighbours inside the grid.
    res2 = grid_hotspots(lon[5:], lat[5:], crs=CRS, cell_size=1000)
    assert res2.weights == "distance band 2000 m"


def test_township_counts_given_equal_counting_the_points() -> None:
    rng = np.random.default_rng(7)
    bx, by = uniform(rng, 2000)
    ang, rad = rng.uniform(0, 2 * np.pi, 600), 3000 * np.sqrt(rng.uniform(0, 1, 600))
    lon, lat = lonlat(np.r_[bx, X0 + 5000 + rad * np.cos(ang)], np.r_[by, Y0 + 15000 + rad * np.sin(ang)])
    towns = square_townships(10)
    counted = township_hotspots(lon, lat, towns, crs=CRS)
    given = township_hotspots_from_counts(towns, counted.features["count"].to_numpy())
    assert (given.features["gi_bin"] == counted.features["gi_bin"]).all()
    assert np.allclose(given.features["z"], counted.features["z"])
    assert (given.features["gi_bin"] == 3).any()
    with pytest.raises(HotspotInputError, match="counts has 3 values"):
        township_hotspots_from_counts(towns, [1, 2, 3])
    with pytest.raises(HotspotInputError, match="counts at index 0 is -1"):
        township_hotspots_from_counts(towns, [-1] + [0] * 99)


def test_suggested_cell_size_from_a_sample_matches_all_points() -> None:
    rng = np.random.default_rng(5)
    x, y = uniform(rng, 1000)  # sparse: twice the mean nearest-neighbour distance beats 20 km / 50
    # Repeated reports at one place are one location, not neighbours at 0 m.
    x, y = np.r_[x, x[:300]], np.r_[y, y[:300]]
    dist = 2 * 0.5 * SIDE / np.sqrt(1000)  # twice the expected mean nearest-neighbour distance, 632 m
    exact = suggest_cell_size(x, y, sample=10**9)
    sampled = suggest_cell_size(x, y, sample=300)
    assert exact > 400 and exact == pytest.approx(dist, rel=0.15)
    assert sampled == pytest.approx(exact, rel=0.08)
    assert suggest_cell_size(x, y, sample=300) == sampled  # same leads, same cell


def test_hotspot_layers_equal_the_separate_computations() -> None:
    lon, lat = planted()
    towns = square_townships(10)
    both = hotspot_layers(lon, lat, towns, crs=CRS, cell_size=1000)
    grid = grid_hotspots(lon, lat, crs=CRS, cell_size=1000)
    kde = kernel_density(lon, lat, crs=CRS)
    assert (both.grid.features["gi_bin"] == grid.features["gi_bin"]).all()
    assert both.grid.features.geom_equals_exact(grid.features.geometry, 1e-12).all()
    assert np.allclose(both.heat["density"], kde["density"]) and np.allclose(both.heat["lon"], kde.geometry.x)
    assert (both.township.features["gi_bin"] == township_hotspots(lon, lat, towns, crs=CRS).features["gi_bin"]).all()
    with pytest.raises(HotspotInputError, match="cell_size=0"):
        hotspot_layers(lon, lat, towns, crs=CRS, cell_size=0)
