"""The ``leadgrid`` CLI end to end, on both backends, including the NYC 311 real-world check."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import app
from tests.conftest import SHARED_DATA, Db, write_tiny_layer

runner = CliRunner()
NYC = SHARED_DATA / "peers" / "nyc"
BOROUGH_CODES = {"MANHATTAN": "1", "BRONX": "2", "BROOKLYN": "3", "QUEENS": "4", "STATEN ISLAND": "5"}


def run(db: Db, *args: str, ok: bool = True) -> str:
    result = runner.invoke(app, list(args), env={"LEADGRID_DATABASE_URL": db.url}, catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result.output


def test_db_upgrade_seeds_reference_data_once(db: Db) -> None:
    first = run(db, "db", "upgrade")
    assert "'bodies': 13" in first and "'routing_rules': 37" in first
    again = run(db, "db", "upgrade")
    assert "'bodies': 0" in again and "'routing_rules': 0" in again


def test_boundaries_leads_lookup_export_roundtrip(db: Db, tmp_path: Path) -> None:
    run(db, "db", "upgrade")
    paths = write_tiny_layer(tmp_path / "layer")
    run(db, "boundaries", "import", str(paths["county"]), "--level", "county", "--datum", "wgs84",
        "--map", "code=code,name=name", "--layer", "t1")
    # Township parents inferred from the county polygons that hold most of their area.
    out = run(db, "boundaries", "import", str(paths["township"]), "--level", "township", "--datum", "wgs84",
              "--map", "code=code,name=name", "--layer", "t1", "--activate")
    rep = json.loads(out.strip().splitlines()[-1])
    assert rep["activated"] and {r["code"]: r["parent"] for r in rep["parents_inferred"]} == {
        "320001001": "320001", "320001002": "320001", "320002001": "320002", "320002002": "320002"}
    looked = json.loads(run(db, "lookup", "117.05", "34.07").strip().splitlines()[-1])
    assert looked["township"] == {"code": "320001002", "name": "甲二镇"}
    assert looked["county"]["code"] == "320001" and looked["city"] is None
    assert looked["method"] == "inside" and "version" in looked and looked["candidates"] == []

    src = tmp_path / "leads.csv"
    src.write_text("id,lng,lat,what,t\nA,117.05,34.07,odour,2026-05-01 08:00\nB,x,34.07,odour,2026-05-01\n",
                   encoding="utf-8")
    out = run(db, "leads", "import", str(src), "--map", "external_id=id,lon=lng,category=what,reported_at=t",
              "--channel", "12369")
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["created"], summary["errors"]) == (1, 1)
    assert Path(summary["error_report"]).exists()
    exported = tmp_path / "out.csv"
    run(db, "leads", "export", "--format", "csv", "--out", str(exported))
    rows = list(csv.DictReader(exported.open(encoding="utf-8")))
    assert len(rows) == 1
    row = rows[0]
    for col in ("external_id", "channel", "category", "city_code", "county_code", "township_code", "body",
                "method", "reason"):
        assert col in row
    assert (row["external_id"], row["channel"], row["township_code"], row["body"]) == ("A", "12369", "320001002",
                                                                                       "TERRITORIAL")
    gj = tmp_path / "out.geojson"
    run(db, "leads", "export", "--format", "geojson", "--out", str(gj))
    fc = json.loads(gj.read_text(encoding="utf-8"))
    assert fc["features"][0]["geometry"]["coordinates"] == [117.05, 34.07]


def test_bad_boundary_file_leaves_no_half_imported_layer(db: Db, tmp_path: Path) -> None:
    run(db, "db", "upgrade")
    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"c": "1", "n": "ok"},
         "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}},
        {"type": "Feature", "properties": {"c": "2", "n": "bowtie"},
         "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}},
    ]}), encoding="utf-8")
    result = runner.invoke(app, ["boundaries", "import", str(bad), "--level", "county", "--datum", "wgs84",
                                 "--map", "code=c,name=n", "--layer", "bad"], env={"LEADGRID_DATABASE_URL": db.url})
    assert result.exit_code != 0
    assert "feature 1 (code '2'): invalid geometry: Self-intersection" in str(result.exception or result.output)
    assert "bad" not in run(db, "boundaries", "list")


def test_audit_verify_cli_names_the_tampered_event(db: Db) -> None:
    from sqlalchemy import text

    run(db, "db", "upgrade")
    from layers import audit
    from tests.conftest import NOW

    with db.uow() as s:
        audit.record(s, [audit.EventIn(NOW, "a", "x", "lead", str(i), {}, {"i": i}) for i in range(4)])
    assert "intact: 4 events" in run(db, "audit", "verify")
    with db.engine.begin() as c:
        c.execute(text("UPDATE audit_events SET reason = 'edited' WHERE seq = 2"))
    result = runner.invoke(app, ["audit", "verify"], env={"LEADGRID_DATABASE_URL": db.url})
    assert result.exit_code == 1 and "seq=2" in result.output


@pytest.mark.realdata
def test_nyc_311_assignment_agrees_with_the_city_labels(db: Db, tmp_path: Path) -> None:
    """Real tickets against real polygons: borough ≥ 99.5 %, community district ≥ 99.0 %."""
    if not (NYC / "nyc311_sample.csv").exists():
        pytest.skip(f"NYC reference data absent at {NYC}")
    run(db, "db", "upgrade")
    run(db, "boundaries", "import", str(NYC / "nyc_boroughs.geojson"), "--level", "county", "--datum", "wgs84",
        "--map", "code=BoroCode,name=BoroName", "--layer", "nyc")
    run(db, "boundaries", "import", str(NYC / "nyc_community_districts.geojson"), "--level", "township",
        "--datum", "wgs84", "--map", "code=BoroCD,name=BoroCD", "--layer", "nyc", "--activate")
    tickets = tmp_path / "nyc311.csv"
    tickets.write_bytes((NYC / "nyc311_sample.csv").read_bytes())
    out = run(db, "leads", "import", str(tickets), "--channel", "other", "--category", "other",
              "--tz", "America/New_York", "--map",
              "external_id=unique_key,lon=longitude,lat=latitude,reported_at=created_date,description=descriptor")
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["created"] >= 14_800  # rows without coordinates are reported, not stored
    exported = tmp_path / "assigned.csv"
    run(db, "leads", "export", "--out", str(exported))
    assigned = {r["external_id"]: r for r in csv.DictReader(exported.open(encoding="utf-8"))}
    boro_total = boro_ok = cd_total = cd_ok = 0
    for t in csv.DictReader((NYC / "nyc311_sample.csv").open(encoding="utf-8")):
        a = assigned.get(t["unique_key"])
        if a is None:
            continue
        if t["borough"] in BOROUGH_CODES:
            boro_total += 1
            boro_ok += a["county_code"] == BOROUGH_CODES[t["borough"]]
        num, _, boro = t["community_board"].partition(" ")
        if num.isdigit() and boro in BOROUGH_CODES:
            cd_total += 1
            cd_ok += a["township_code"] == str(int(BOROUGH_CODES[boro]) * 100 + int(num))
    print(f"borough {boro_ok}/{boro_total}, community district {cd_ok}/{cd_total}")
    assert boro_total > 14_000 and cd_total > 4_900
    assert boro_ok / boro_total >= 0.995
    assert cd_ok / cd_total >= 0.990
