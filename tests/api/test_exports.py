"""Exports: CSV, GeoJSON and Excel of leads, KPI table; filtered, scoped, streamed."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

from openpyxl import load_workbook
from sqlalchemy import update

from layers.models import Lead
from tests.api.conftest import Api

LEAD = {"channel": "12345", "category": "catering_fumes", "reported_at": "2026-05-01T09:00:00+08:00"}


def _file(api: Api, ext: str, lon: float, lat: float, **kw: object) -> dict:
    r = api.client.post("/leads", json={**LEAD, "external_id": ext, "lon": lon, "lat": lat, **kw},
                        headers=api.as_("dispatcher"))
    assert r.status_code == 201, r.text
    return r.json()


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))


def test_csv_geojson_xlsx_are_scoped_and_filtered(api: Api) -> None:
    a = _file(api, "a", 117.05, 34.02, address="=HYPERLINK(\"http://x\")")
    _file(api, "b", 117.15, 34.02)
    _file(api, "c", 117.05, 34.03, category="industrial_gas")
    h = api.as_("field_a")
    r = api.client.get("/exports/leads.csv", headers=h)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = _csv(r.text)
    assert sorted(x["external_id"] for x in rows) == ["a", "c"]  # b is in the other county
    only = _csv(api.client.get("/exports/leads.csv?category=catering_fumes", headers=h).text)
    assert [x["code"] for x in only] == [a["code"]]
    gj = api.client.get("/exports/leads.geojson", headers=h).json()
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 2
    f = next(f for f in gj["features"] if f["id"] == a["code"])
    assert f["geometry"] == {"type": "Point", "coordinates": [117.05, 34.02]}  # RFC 7946: lon, lat
    x = api.client.get("/exports/leads.xlsx", headers=h)
    assert x.status_code == 200
    ws = load_workbook(io.BytesIO(x.content), read_only=True).active
    values = list(ws.values)
    assert values[0][0] == "code" and len(values) == 3
    page = _csv(api.client.get("/exports/leads.csv?page=2&page_size=1", headers=api.as_("leader")).text)
    assert len(page) == 1
    assert api.client.get("/exports/leads.csv").status_code == 401
    assert api.client.get("/exports/leads.pdf", headers=h).status_code == 422


def test_csv_neutralises_formulas(api: Api) -> None:
    _file(api, "=cmd|' /C calc'!A0", 117.05, 34.02)
    rows = _csv(api.client.get("/exports/leads.csv", headers=api.as_("leader")).text)
    assert rows[0]["external_id"].startswith("'=")


def test_kpi_counts_overdue_in_the_denominator(api: Api) -> None:
    now = datetime.now(UTC)
    a = _file(api, "k1", 117.05, 34.02)
    b = _file(api, "k2", 117.05, 34.02)
    _file(api, "k3", 117.05, 34.02)
    _file(api, "k4", 117.15, 34.02)
    with api.db.uow() as s:
        s.execute(update(Lead).where(Lead.code == a["code"]).values(
            status="closed", due_at=now + timedelta(days=1), closed_at=now))
        s.execute(update(Lead).where(Lead.code == b["code"]).values(due_at=now - timedelta(days=1)))
    rows = _csv(api.client.get("/exports/kpi.csv", headers=api.as_("leader")).text)
    by = {(r["county_code"], r["body_code"]): r for r in rows}
    r = by[("320001", "CMB")]
    assert (r["total"], r["open"], r["closed"], r["open_overdue"], r["closed_on_time"]) == ("3", "2", "1", "1", "1")
    assert float(r["on_time_rate"]) == 0.5  # 1 on time / (1 closed + 1 open overdue)
    scoped = _csv(api.client.get("/exports/kpi.csv", headers=api.as_("field_b")).text)
    assert [(r["county_code"], r["total"]) for r in scoped] == [("320002", "1")]
