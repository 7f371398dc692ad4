"""Benchmark: geo.assign vs geopandas.sjoin(predicate='within'), measured in the same run.

Usage: ``.venv/bin/python bench/assign.py [--points N] [--seed S]``

Layers:
* a township-like layer for Xuzhou: there are no open township polygons, so ~160 polygons are
  synthesised by a Voronoi subdivision of the real (Tianditu, CGCS2000) county layer. It is a
  benchmark fixture only and must never be presented as real townships.
* the national county layer (2,849 simplified polygons; GCJ-02, used as-is: datum does not
  matter for speed).

Prints index build time, points/s for assign and sjoin, their ratio, whether answers agree for
points strictly inside one polygon, and single-point lookup p50/p99 latency.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geo.assign import BoundaryIndex, assign, lookup  # noqa: E402

DATA = ROOT / ".." / "shared" / "data" / "boundaries"


def synthetic_townships(
    counties: gpd.GeoDataFrame, n_total: int = 160, seed: int = 0
) -> gpd.GeoDataFrame:
    """Split each county into Voronoi cells of random seeds (count proportional to area).

    Returns a layer with city, county and township levels (codes: county adcode + 3 digits).
    Synthetic: for benchmarks only.
    """
    rng = np.random.default_rng(seed)
    areas = shapely.area(counties.geometry.values)  # degrees^2: only proportions matter
    per = np.maximum(1, np.round(areas / areas.sum() * n_total)).astype(int)
    rows = []
    for (_, c), k in zip(counties.iterrows(), per, strict=True):
        geom = c.geometry
        minx, miny, maxx, maxy = geom.bounds
        seeds: list[shapely.Point] = []
        while len(seeds) < k:
            xs = rng.uniform(minx, maxx, 4 * k)
            ys = rng.uniform(miny, maxy, 4 * k)
            inside = shapely.contains_xy(geom, xs, ys)
            seeds.extend(shapely.points(xs[inside], ys[inside])[: k - len(seeds)])
        cells = shapely.get_parts(
            shapely.voronoi_polygons(shapely.multipoints(seeds), extend_to=geom)
        )
        j = 0
        for cell in cells:
            part = shapely.intersection(cell, geom)
            polys = [
                p for p in shapely.get_parts(part) if p.geom_type in ("Polygon", "MultiPolygon")
            ]
            if not polys:
                continue
            j += 1
            merged = shapely.union_all(polys)
            rows.append(
                {
                    "code": f"{c['adcode']}{j:03d}",
                    "name": f"{c['name']}-synthetic-{j}",
                    "level": "township",
                    "parent_code": str(c["adcode"]),
                    "geometry": merged,
                }
            )
    towns = gpd.GeoDataFrame(rows, geometry="geometry", crs=4326)
    county_rows = gpd.GeoDataFrame(
        {
            "code": counties["adcode"].astype(str),
            "name": counties["name"],
            "level": "county",
            "parent_code": counties["parent_adcode"].astype(str),
        },
        geometry=np.asarray(counties.geometry.values, dtype=object),
        crs=4326,
    )
    city = gpd.GeoDataFrame(
        {"code": ["320300"], "name": ["徐州市"], "level": ["city"], "parent_code": [None]},
        geometry=[shapely.union_all(counties.geometry.values)],
        crs=4326,
    )
    return pd.concat([city, county_rows, towns], ignore_index=True)


def random_points_in(
    polys: gpd.GeoSeries, n: int, rng: np.random.Generator, outside_frac: float = 0.02
) -> tuple[np.ndarray, np.ndarray]:
    """n points: area-weighted uniform inside the polygons, plus a share uniform in the bbox."""
    n_out = int(n * outside_frac)
    n_in = n - n_out
    geoms = polys.values
    b = shapely.bounds(geoms)
    bbox_area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    fill = np.clip(shapely.area(geoms) / np.maximum(bbox_area, 1e-300), 0.05, 1.0)
    want = rng.multinomial(n_in, shapely.area(geoms) / shapely.area(geoms).sum())
    xs_l, ys_l = [], []
    # Rejection sampling per polygon bbox (a loop over polygons, not points).
    for g, (x0, y0, x1, y1), k, f in zip(geoms, b, want, fill, strict=True):
        if k == 0:
            continue
        m = int(k / f * 1.3) + 16
        xs = rng.uniform(x0, x1, m)
        ys = rng.uniform(y0, y1, m)
        ok = np.flatnonzero(shapely.contains_xy(g, xs, ys))[:k]
        xs_l.append(xs[ok])
        ys_l.append(ys[ok])
    tb = polys.total_bounds
    xs_l.append(rng.uniform(tb[0], tb[2], n_out))
    ys_l.append(rng.uniform(tb[1], tb[3], n_out))
    x = np.concatenate(xs_l)
    y = np.concatenate(ys_l)
    # Top up to exactly n with bbox points so the count is what was asked.
    short = n - x.size
    if short > 0:
        x = np.concatenate([x, rng.uniform(tb[0], tb[2], short)])
        y = np.concatenate([y, rng.uniform(tb[1], tb[3], short)])
    perm = rng.permutation(n)
    return x[perm], y[perm]


def bench_layer(label: str, layer: gpd.GeoDataFrame, level: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    polys = layer[layer["level"] == level]
    x, y = random_points_in(polys.geometry, n, rng)
    print(f"\n== {label}: {len(polys)} {level} polygons, {n:,} points")

    t = time.perf_counter()
    index = BoundaryIndex.build(layer, f"bench-{label}")
    t_build = time.perf_counter() - t
    li = index._by_level[index.levels[-1]]
    print(f"index build: {t_build:.2f} s (grid {li.nx}x{li.ny}, cell {li.cell:.5f} deg)")

    t = time.perf_counter()
    res = assign(index, x, y)
    t_assign = time.perf_counter() - t

    pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy(x, y), crs=4326)
    target = polys[["code", "geometry"]].reset_index(drop=True)
    t = time.perf_counter()
    joined = gpd.sjoin(pts, target, predicate="within", how="left")
    t_sjoin = time.perf_counter() - t

    col = f"{level}_code"
    # Strictly inside exactly one polygon: both must give the same code.
    one = joined.groupby(level=0)["code"].agg(["count", "first"])
    strict = (one["count"] == 1).to_numpy() & (res["method"] == "inside").to_numpy()
    agree = (res[col].to_numpy()[strict] == one["first"].to_numpy()[strict]).mean()
    methods = res["method"].value_counts().to_dict()
    print(
        f"assign: {t_assign:.3f} s = {n / t_assign:,.0f} points/s  methods={methods} "
        f"review={int(res['review'].sum()):,}"
    )
    print(f"sjoin : {t_sjoin:.3f} s = {n / t_sjoin:,.0f} points/s")
    print(f"ratio assign/sjoin throughput: {t_sjoin / t_assign:.2f}x")
    print(f"agreement on {int(strict.sum()):,} strictly-inside points: {agree * 100:.4f} %")

    # Single-point latency over a sample of the same points.
    m = min(20_000, n)
    lat_us = np.empty(m)
    for i in range(m):
        t0 = time.perf_counter_ns()
        lookup(index, x[i], y[i])
        lat_us[i] = (time.perf_counter_ns() - t0) / 1000.0
    print(
        f"lookup latency over {m:,} points: p50 {np.percentile(lat_us, 50):.1f} us, "
        f"p99 {np.percentile(lat_us, 99):.1f} us, max {lat_us.max():.0f} us"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    county_file = DATA / "xuzhou_counties_tianditu_cgcs2000.geojson"
    national_file = DATA / "china_counties_simplified.geojson"
    if not county_file.exists() or not national_file.exists():
        print(
            f"SKIP: reference data not found under {DATA.resolve()} (needs {county_file.name} "
            f"and {national_file.name})"
        )
        return 0
    counties = gpd.read_file(county_file).set_crs(4326, allow_override=True)
    towns = synthetic_townships(counties)
    bench_layer("xuzhou-synthetic-townships", towns, "township", args.points, args.seed)

    nat = gpd.read_file(national_file).set_crs(4326, allow_override=True)
    nat_layer = gpd.GeoDataFrame(
        {
            "code": nat["adcode"].astype(str),
            "name": nat["name"],
            "level": "county",
            "parent_code": None,
        },
        geometry=np.asarray(nat.geometry.values, dtype=object),
        crs=4326,
    )
    bench_layer("china-counties", nat_layer, "county", args.points, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
