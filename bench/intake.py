"""Bulk intake throughput: a 100,000-row CSV into SpatiaLite and PostGIS.

Prints rows/s of ``leadgrid leads import`` (set-based: chunks of 5,000 rows, one vectorised
assignment, multi-row inserts) beside a baseline measured in the same run: the same intake called
one lead per unit of work, as a naive per-row importer would. The ratio is the point.

    .venv/bin/python bench/intake.py [--rows 100000] [--baseline-rows 500] [--postgres URL]

PostGIS is used when ``--postgres`` or ``LEADGRID_TEST_POSTGRES_URL`` names an admin URL; a
scratch database is created and dropped.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text

from layers import demo, jurisdictions, lead_import, leads, migrate, routing
from layers.db import make_engine, session_factory, unit_of_work
from layers.settings import Settings

DATA = Path(__file__).resolve().parents[1] / "data"
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def write_csv(path: Path, n: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    lon = rng.uniform(116.4, 118.6, n)
    lat = rng.uniform(33.75, 34.95, n)
    cats = ["construction_dust", "catering_fumes", "industrial_gas", "road_dust", "odour", "sewage"]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ticket", "lng", "lat", "type", "created", "content"])
        for i in range(n):
            when = (NOW - timedelta(minutes=int(i))).strftime("%Y-%m-%d %H:%M:%S")
            w.writerow([f"B{i:07d}", f"{lon[i]:.6f}", f"{lat[i]:.6f}", cats[i % len(cats)], when, "群众反映"])


def prepare(url: str, work: Path) -> Settings:
    settings = Settings(database_url=url)
    engine = make_engine(settings)
    migrate.upgrade(engine)
    sessions = session_factory(engine)
    with unit_of_work(sessions) as s:
        routing.seed(s, DATA, now=NOW)
        demo.load_boundaries(s, work / "demo", now=NOW)
    engine.dispose()
    return settings


def run_backend(name: str, url: str, csv_path: Path, rows: int, baseline_rows: int, work: Path) -> None:
    settings = prepare(url, work)
    engine = make_engine(settings)
    sessions = session_factory(engine)
    jurisdictions.INDEX_CACHE.clear()
    with unit_of_work(sessions) as s:
        jurisdictions.INDEX_CACHE.get(s)  # build the index outside the timed part, as a server has it
    mapping = lead_import.parse_mapping(
        "external_id=ticket,lon=lng,category=type,reported_at=created,description=content")

    t0 = time.perf_counter()
    summary = lead_import.import_file(lambda: unit_of_work(sessions), csv_path, mapping=mapping,
                                      channel="12345", datum="wgs84", actor="bench", now=NOW,
                                      submit=leads.submit)
    bulk_s = time.perf_counter() - t0
    assert summary.created == rows, summary

    t0 = time.perf_counter()
    again = lead_import.import_file(lambda: unit_of_work(sessions), csv_path, mapping=mapping,
                                    channel="12345", datum="wgs84", actor="bench", now=NOW,
                                    submit=leads.submit)
    reimport_s = time.perf_counter() - t0
    assert again.created == 0 and again.existing == rows

    items = [leads.LeadIn(channel="12369", external_id=f"N{i}", category="odour", reported_at=NOW,
                          lon=117.0 + i * 1e-4, lat=34.2) for i in range(baseline_rows)]
    t0 = time.perf_counter()
    for it in items:
        with unit_of_work(sessions) as s:
            leads.submit(s, [it], actor="bench", now=NOW)
    base_s = time.perf_counter() - t0
    engine.dispose()

    bulk_rate, base_rate = rows / bulk_s, baseline_rows / base_s
    print(f"{name:<10} import {rows:,} rows: {bulk_s:6.1f} s = {bulk_rate:8,.0f} rows/s | "
          f"re-import (all existing): {reimport_s:5.1f} s | per-row baseline: {base_rate:6,.0f} rows/s | "
          f"ratio {bulk_rate / base_rate:5.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--baseline-rows", type=int, default=500)
    ap.add_argument("--postgres", default=os.environ.get("LEADGRID_TEST_POSTGRES_URL"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        csv_path = work / "leads.csv"
        write_csv(csv_path, args.rows)
        run_backend("spatialite", f"sqlite:///{work / 'bench.sqlite'}", csv_path, args.rows, args.baseline_rows, work)
        if args.postgres:
            name = f"leadgrid_bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(text(f'CREATE DATABASE "{name}"'))
            try:
                run_backend("postgis", args.postgres.rsplit("/", 1)[0] + "/" + name, csv_path, args.rows,
                            args.baseline_rows, work)
            finally:
                with admin.connect() as c:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
        else:
            print("postgis    skipped: pass --postgres or set LEADGRID_TEST_POSTGRES_URL")


if __name__ == "__main__":
    main()
