"""Benchmark: import + validate the national county layer, and preview a change against open leads.

Usage: ``.venv/bin/python bench/boundaries.py [--leads N] [--postgres ADMIN_URL | --spatialite]``

* Import: ``china_counties_simplified.geojson`` (2,849 polygons, GCJ-02, 872k vertices) as a
  staged county layer (the import validates it too), then :func:`validate_version` alone.
* The layer is activated with an overlap threshold above its known simplification overlaps
  (max 4.0 km², see ../shared/data/boundaries/SOURCES.md): it is a scale fixture, not a
  correct layer.
* N open leads (default 1,000,000) at random points inside China are written with COPY
  (PostGIS) and assigned under the active version.
* A new version splits the 20 largest counties in two (east / west of their centroid); the
  preview re-assigns every open lead against it and counts those that move.

Prints seconds for each step. Goal: each under 60 s. Needs ../shared/data (skips otherwise)
and, by default, PostGIS at postgresql+psycopg://postgres@127.0.0.1:5432/postgres.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from layers import boundary_review, jurisdictions, migrate, routing  # noqa: E402
from layers.db import make_engine, session_factory, unit_of_work  # noqa: E402
from layers.routing import Router  # noqa: E402
from layers.settings import Settings  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "boundaries" / "china_counties_simplified.geojson"
NOW = datetime(2026, 6, 1, 2, 0, tzinfo=UTC)


def split_layer(path: Path, out: Path, n: int = 20) -> int:
    """The national layer with its ``n`` largest counties split at their centroid's longitude."""
    g = gpd.read_file(path, engine="pyogrio")
    metric_area = g.to_crs("+proj=aea +lat_1=25 +lat_2=47 +lon_0=105 +ellps=GRS80").area
    rows = []
    big = set(metric_area.nlargest(n).index)
    for i, r in g.iterrows():
        if i not in big:
            rows.append({"adcode": r.adcode, "name": r["name"], "geometry": r.geometry})
            continue
        geom = r.geometry
        minx, miny, maxx, maxy = geom.bounds
        cx = geom.centroid.x
        west = shapely.make_valid(geom.intersection(shapely.box(minx - 1, miny - 1, cx, maxy + 1)))
        east = shapely.make_valid(geom.intersection(shapely.box(cx, miny - 1, maxx + 1, maxy + 1)))
        rows.append({"adcode": r.adcode, "name": r["name"], "geometry": west})
        rows.append({"adcode": r.adcode[:4] + "9" + r.adcode[5:], "name": r["name"] + "东", "geometry": east})
    gpd.GeoDataFrame(rows, geometry="geometry", crs=4326).to_file(out, driver="GeoJSON", engine="pyogrio")
    return n


def write_leads(engine: Any, sessions: Any, n: int, seed: int = 0) -> float:
    """N open leads at random points inside the active layer, written with COPY; returns seconds."""
    from geo.assign import assign

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    with unit_of_work(sessions) as s:
        index = jurisdictions.INDEX_CACHE.get(s)
        router = Router.load(s)
    if index is None:
        raise RuntimeError("no active layer")
    vid = int(index.version)
    minx, miny, maxx, maxy = index.bounds
    lon_l, lat_l, codes_l = [], [], []
    have = 0
    while have < n:
        lon = rng.uniform(minx, maxx, 2 * n)
        lat = rng.uniform(miny, maxy, 2 * n)
        res = assign(index, lon, lat, tolerance_m=0.0, near_border_m=0.0)
        ok = (res["method"] == "inside").to_numpy()
        lon_l.append(lon[ok])
        lat_l.append(lat[ok])
        codes_l.append(res.loc[ok, "county_code"].to_numpy())
        have += int(ok.sum())
    lon = np.concatenate(lon_l)[:n]
    lat = np.concatenate(lat_l)[:n]
    county = np.concatenate(codes_l)[:n]
    cats = np.array(["catering_fumes", "construction_dust", "industrial_gas", "road_dust"])[rng.integers(0, 4, n)]
    keys = pd.DataFrame({"c": cats, "k": county}).drop_duplicates()
    body = {(c, k): router.route(c, None, k, None) for c, k in zip(keys.c, keys.k, strict=True)}
    stamp = NOW.isoformat()
    buf = io.StringIO()
    for i in range(n):
        rt = body[(cats[i], county[i])]
        buf.write(f"B{i}\tother\tb{i}\t{cats[i]}\tnormal\t\t\tf\t{stamp}\t{stamp}\t"
                  f"SRID=4326;POINT({float(lon[i])!r} {float(lat[i])!r})\t{county[i]}\t{rt.body_code}\t{vid}\t"
                  "inside\tinside\t"
                  f"[]\tf\t\tf\tdispatched\t{stamp}\t{stamp}\t1\n")
    buf.seek(0)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        with cur.copy(
            "COPY leads (code, channel, external_id, category_code, urgency, description, address, public, "
            "reported_at, received_at, geom, county_code, body_code, boundary_version_id, assign_method, "
            "assign_reason, assign_candidates, review, review_reason, routing_fallback, status, created_at, "
            "updated_at, row_version) FROM STDIN"
        ) as cp:
            while chunk := buf.read(1 << 20):
                cp.write(chunk)
        raw.commit()
        cur.execute("ANALYZE leads")
        raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--leads", type=int, default=1_000_000)
    ap.add_argument("--postgres", default=os.environ.get(
        "LEADGRID_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--spatialite", action="store_true", help="SpatiaLite file instead (no lead preview)")
    args = ap.parse_args()
    if not DATA.exists():
        print(f"skipped: {DATA} absent")
        return
    tmp = Path(tempfile.mkdtemp(prefix="leadgrid-bench-"))
    admin = None
    if args.spatialite:
        url = f"sqlite:///{tmp / 'bench.sqlite'}"
    else:
        admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        name = f"leadgrid_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        url = args.postgres.rsplit("/", 1)[0] + "/" + name
    engine = make_engine(Settings(database_url=url))
    sessions = session_factory(engine)
    try:
        migrate.upgrade(engine)
        with unit_of_work(sessions) as s:
            routing.seed(s, ROOT / "data", now=NOW)
        figures: dict[str, float] = {}
        t = time.perf_counter()
        with unit_of_work(sessions) as s:
            rep = jurisdictions.import_layer(s, DATA, level="county", datum="gcj02", layer="national",
                                             mapping="code=adcode,name=name", actor="bench", now=NOW)
        figures["import 2,849 counties (incl. validation)"] = time.perf_counter() - t
        t = time.perf_counter()
        with unit_of_work(sessions) as s:
            report = boundary_review.validate_version(s, "national")
        figures["validate national layer"] = time.perf_counter() - t
        print(f"validation: {len(report.errors)} errors, {len(report.warnings)} warnings {report.counts()}")
        assert rep.features == 2849
        t = time.perf_counter()
        with unit_of_work(sessions) as s:
            jurisdictions.activate_layer(s, "national", actor="bench", now=NOW, min_area_m2=5e6)
        figures["activate (no leads yet)"] = time.perf_counter() - t
        if not args.spatialite:
            setup = write_leads(engine, sessions, args.leads)
            print(f"setup: wrote {args.leads:,} open leads with COPY in {setup:.1f} s (not a goal)")
        split = tmp / "national_v2.geojson"
        split_layer(DATA, split)
        with unit_of_work(sessions) as s:
            jurisdictions.import_layer(s, split, level="county", datum="gcj02", layer="national-v2",
                                       mapping="code=adcode,name=name", actor="bench", now=NOW)
        t = time.perf_counter()
        with unit_of_work(sessions) as s:
            p = boundary_review.preview(s, "national-v2", validate=False)
        figures[f"preview against {p.leads.checked:,} open leads"] = time.perf_counter() - t
        print(f"preview: {len(p.jurisdictions.added)} added, {len(p.jurisdictions.changed)} changed; "
              f"{p.leads.count:,} of {p.leads.checked:,} open leads move; parts {p.seconds}")
        for k, v in figures.items():
            print(f"{k:<48} {v:8.2f} s  {'OK' if v < 60 else 'OVER 60 s'}")
    finally:
        engine.dispose()
        if admin is not None:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    main()
