"""Intake: idempotency, datums, assignment explanations, routing, address geocoding, CSV import."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from geo import crs as gcrs
from layers import audit, lead_import, leads
from layers.errors import Invalid
from layers.models import AuditEvent, Dispatch, Lead
from tests.conftest import NOW, Db


def _lead(ext: str, lon: float | None, lat: float | None, **kw: object) -> leads.LeadIn:
    base: dict = {"channel": "12345", "external_id": ext, "category": "catering_fumes", "reported_at": NOW,
                  "lon": lon, "lat": lat}
    base.update(kw)
    return leads.LeadIn(**base)


def _submit(db: Db, items: list[leads.LeadIn]) -> list[leads.Outcome]:
    with db.uow() as s:
        return leads.submit(s, items, actor="test", now=NOW)


def test_intake_is_idempotent_on_channel_and_external_id(seeded: Db) -> None:
    first = _submit(seeded, [_lead("1", 117.05, 34.02), _lead("2", 117.15, 34.02), _lead("1", 117.05, 34.02)])
    assert [o.created for o in first] == [True, True, False]  # the in-batch duplicate is not stored
    assert first[2].code == first[0].code
    again = _submit(seeded, [_lead("1", 117.05, 34.02), _lead("1", 117.05, 34.02, channel="12369")])
    assert [o.created for o in again] == [False, True]  # same id on another channel is another lead
    with seeded.uow() as s:
        assert s.scalar(select(func.count(Lead.id))) == 3
        assert s.scalar(select(func.count(Dispatch.id))) == 3
        assert s.scalar(select(func.count(AuditEvent.id))) >= 3
        assert audit.verify(s).ok


def test_every_lead_records_version_method_reason_and_rule(seeded: Db) -> None:
    out = _submit(seeded, [_lead("in", 117.05, 34.02), _lead("edge", 117.10, 34.02),
                           _lead("near", 117.2015, 34.02), _lead("far", 118.0, 35.0)])
    by = {o.position: o.assignment for o in out}
    assert by[0]["method"] == "inside" and by[0]["township_code"] == "320001001"
    assert by[0]["body_code"] == "CMB" and by[0]["routing_rule_id"] is not None
    # On the shared county border: the stated tie-break (lowest code) and a review flag.
    assert by[1]["method"] == "border" and by[1]["township_code"] == "320001001"
    assert {c["code"] for c in by[1]["candidates"]} >= {"320001001", "320002001"} and by[1]["review"]
    # 0.0015° east of the edge at lat 34 is about 138 m: within the 200 m tolerance.
    assert by[2]["method"] == "nearest" and by[2]["township_code"] == "320002001"
    assert 120 < by[2]["distance_m"] < 160
    # Far outside: never dropped, queued for the dispatcher with the reason.
    assert by[3]["method"] == "unassigned" and by[3]["reason"] == "outside service area" and by[3]["review"]
    with seeded.uow() as s:
        far = s.scalar(select(Lead).where(Lead.external_id == "far"))
        assert far.status == "received" and far.township_code is None
        inside = s.scalar(select(Lead).where(Lead.external_id == "in"))
        assert inside.boundary_version_id is not None and inside.assign_reason == "inside"


def test_datums_are_converted_before_assignment(seeded: Db) -> None:
    """A WeChat (GCJ-02) point 300 m inside a township edge lands where its true position is."""
    true_lon, true_lat = 117.0965, 34.02  # ~320 m west of the county border at 117.10
    glon, glat = gcrs.from_storage(np.array([true_lon]), np.array([true_lat]), "gcj02")
    assert glon[0] > 117.10  # read naively, the GCJ-02 coordinate is already in the other county
    out = _submit(seeded, [_lead("wx", float(glon[0]), float(glat[0]), datum="gcj02")])
    assert out[0].assignment["county_code"] == "320001"
    with seeded.uow() as s:
        lead = s.scalar(select(Lead).where(Lead.external_id == "wx"))
        assert lead.orig_datum == "gcj02" and lead.orig_lon == pytest.approx(float(glon[0]))


def test_category_without_rule_falls_to_territory_and_is_flagged(seeded: Db) -> None:
    out = _submit(seeded, [_lead("o", 117.05, 34.07, category="odour")])
    a = out[0].assignment
    assert a["body_code"] == "TERRITORIAL" and a["routing_rule_id"] is None
    assert "属地兜底" in a["review_reason"] and a["review"]


def test_jurisdiction_specific_rule_wins_over_general(seeded: Db) -> None:
    from layers import routing

    with seeded.uow() as s:
        routing.add_rule(s, priority=5, category_code="catering_fumes", jurisdiction_code="320002",
                         body_code="EEB", actor="t", now=NOW)
    out = _submit(seeded, [_lead("a", 117.05, 34.02), _lead("b", 117.15, 34.02)])
    assert out[0].assignment["body_code"] == "CMB" and out[1].assignment["body_code"] == "EEB"


def test_rules_changed_within_a_transaction_route_its_later_leads(seeded: Db) -> None:
    """The router checked once per transaction is checked again after a rule is added or retired."""
    from layers import routing

    with seeded.uow() as s:
        first = leads.submit(s, [_lead("t1", 117.15, 34.02)], actor="test", now=NOW)
        rule = routing.add_rule(s, priority=5, category_code="catering_fumes", jurisdiction_code="320002",
                                body_code="EEB", actor="t", now=NOW)
        second = leads.submit(s, [_lead("t2", 117.15, 34.02)], actor="test", now=NOW)
        routing.retire_rule(s, rule.id, actor="t", now=NOW)
        third = leads.submit(s, [_lead("t3", 117.15, 34.02)], actor="test", now=NOW)
    assert [o.assignment["body_code"] for o in (first[0], second[0], third[0])] == ["CMB", "EEB", "CMB"]


def test_address_only_lead_is_assigned_by_address(seeded: Db) -> None:
    out = _submit(seeded, [_lead("addr", None, None, address="测试市乙县乙二镇某村东200米")])
    a = out[0].assignment
    assert a["method"] == "by_address" and a["township_code"] == "320002002" and a["county_code"] == "320002"


def test_address_and_point_disagreeing_is_a_conflict(seeded: Db) -> None:
    out = _submit(seeded, [_lead("c", 117.05, 34.02, address="乙县乙二镇幸福路8号")])
    a = out[0].assignment
    assert a["township_code"] == "320001001"  # the point decides, the dispatcher is told
    assert a["review"] and a["review_reason"].startswith("conflict")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"external_id": "", "category": "odour", "lon": 1, "lat": 2, "reported_at": "2026-01-01"}, "external_id"),
        ({"external_id": "x", "category": "nope", "lon": 1, "lat": 2, "reported_at": "2026-01-01"}, "category"),
        ({"external_id": "x", "category": "odour", "lon": "abc", "lat": 2, "reported_at": "2026-01-01"}, "lon"),
        ({"external_id": "x", "category": "odour", "lon": 200, "lat": 2, "reported_at": "2026-01-01"}, "lon"),
        ({"external_id": "x", "category": "odour", "lon": 117, "lat": "nan", "reported_at": "2026-01-01"}, "lat"),
        ({"external_id": "x", "category": "odour", "lon": 117, "reported_at": "2026-01-01"}, "lat"),
        ({"external_id": "x", "category": "odour", "lon": 117, "lat": 34, "reported_at": "yesterday"}, "reported_at"),
        ({"external_id": "x", "category": "odour", "lon": 117, "lat": 34, "reported_at": "NaT"}, "reported_at"),
        ({"external_id": "x", "category": "odour", "lon": 117, "lat": 34, "reported_at": "2026-02-30"}, "reported_at"),
        ({"external_id": "x", "category": "odour", "lon": 117, "lat": 34, "reported_at": "2026-01-01",
          "datum": "mars"}, "datum"),
        ({"external_id": "x", "category": "odour", "reported_at": "2026-01-01"}, "lon/lat"),
        ({"external_id": "x", "category": "odour", "lon": 117, "lat": 34, "reported_at": "2030-01-01"}, "reported_at"),
    ],
)
def test_validation_names_the_field(raw: dict, field: str) -> None:
    with pytest.raises(Invalid) as exc:
        leads.validate_lead(raw, channel="12345", categories={"odour"}, now=NOW)
    assert exc.value.field == field


def test_csv_import_keeps_good_rows_reports_bad_ones_and_is_idempotent(seeded: Db, tmp_path: Path) -> None:
    path = tmp_path / "tickets.csv"
    rows = [
        ["ticket", "x", "y", "kind", "when", "text"],
        ["T1", "117.05", "34.02", "catering_fumes", "2026-05-01 09:00", "油烟"],
        ["T2", "117.15", "34.08", "construction_dust", "2026-05-01 10:00", "扬尘"],
        ["T3", "abc", "34.02", "odour", "2026-05-01 10:00", "坏坐标"],
        ["T4", "117.05", "34.02", "no_such", "2026-05-01 10:00", "坏类别"],
        ["", "117.05", "34.02", "odour", "2026-05-01 10:00", "无编号"],
    ]
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    mapping = lead_import.parse_mapping(
        "external_id=ticket,lon=x,lat=y,category=kind,reported_at=when,description=text")

    def run() -> lead_import.ImportSummary:
        return lead_import.import_file(seeded.uow, path, mapping=mapping, channel="12345", datum="wgs84",
                                       actor="t", now=NOW, submit=leads.submit)

    first = run()
    assert (first.rows, first.created, first.existing) == (5, 2, 0)
    assert [(e.row, e.field) for e in first.errors] == [(4, "lon"), (5, "category"), (6, "external_id")]
    report = list(csv.DictReader(first.error_report.open(encoding="utf-8-sig")))
    assert report[0] == {"row": "4", "field": "lon", "value": "abc",
                         "reason": "lon: 'abc' is not valid; a decimal number"}
    second = run()
    assert (second.created, second.existing) == (0, 2)
    with seeded.uow() as s:
        assert s.scalar(select(func.count(Lead.id))) == 2


def test_import_rejects_unknown_mapping(seeded: Db, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(Invalid, match="--map lon"):
        lead_import.import_file(seeded.uow, path, mapping={"lon": "longitude"}, channel="12345", datum=None,
                                actor="t", now=NOW, submit=leads.submit)
    with pytest.raises(Invalid, match="a target among"):
        lead_import.parse_mapping("longitude=x")


def test_list_counts_exactly_up_to_the_cap_then_says_at_least(seeded: Db) -> None:
    from layers.users import Principal

    _submit(seeded, [_lead(f"c{i}", lon, 34.02) for i, lon in enumerate((117.01, 117.04, 117.07, 117.13, 117.16))])
    leader = Principal("boss", frozenset({"leader"}))
    county = Principal("f", frozenset({"field"}), frozenset({"320001"}))
    with seeded.uow() as s:
        assert leads.list_leads(s, leader, leads.LeadFilter(), page_size=2, count_cap=None)[:2] == (5, True)
        assert leads.list_leads(s, leader, leads.LeadFilter(), page_size=2, count_cap=5)[:2] == (5, True)
        total, exact, rows = leads.list_leads(s, leader, leads.LeadFilter(), page_size=2, count_cap=3)
        assert (total, exact, len(rows)) == (3, False, 2)
        # The cap applies after scope: the county user sees only its own leads, counted exactly.
        in_county = leads.list_leads(s, county, leads.LeadFilter(), count_cap=3)
        assert in_county[:2] == (3, True) and {r["county_code"] for r in in_county[2]} == {"320001"}


@pytest.mark.parametrize("migrated", ["postgis"], indirect=True)
def test_key_lookup_probes_both_columns_of_the_unique_index_whatever_the_statistics(seeded: Db) -> None:
    """A channel that grew after the last ANALYZE (estimated at one row) is not walked whole."""
    from sqlalchemy import text

    from layers.leads import _key_stmt
    from layers.models import Lead

    with seeded.uow() as s:
        s.execute(text("ANALYZE leads"))  # statistics from an empty table...
        s.execute(text("""
            INSERT INTO leads (code, channel, external_id, category_code, urgency, description, address,
                public, reported_at, received_at, orig_datum, assign_method, assign_reason,
                assign_candidates, review, review_reason, routing_fallback, status, created_at,
                updated_at, row_version)
            SELECT 'K' || g, 'wechat', 'w' || g, 'catering_fumes', 'normal', '', '', false, now(), now(),
                   'wgs84', 'unassigned', '', '[]'::jsonb, false, '', false, 'received', now(), now(), 1
            FROM generate_series(1, 5000) AS g"""))  # ...then the channel grows
        stmt = _key_stmt(True, "wechat", ["w17", "w4242", "absent"], Lead.code)
        plan = "\n".join(r[0] for r in s.execute(text("EXPLAIN " + str(stmt.compile(
            dialect=s.get_bind().dialect, compile_kwargs={"literal_binds": True})))))
        got = sorted((r.external_id, r.code) for r in s.execute(stmt))
    assert got == [("w17", "K17"), ("w4242", "K4242")]
    assert "external_id)::text = k.ext" in plan and "Index Cond" in plan, plan
    assert "Filter" not in plan, plan
