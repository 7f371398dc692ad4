"""A township split in a new version: preview, activation re-dispatch, closed leads, rollback, history."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import geopandas as gpd
from shapely.geometry import box
from sqlalchemy import select, update

from layers import audit, boundary_review, jurisdictions, leads
from layers.models import AuditEvent, BoundaryVersion, Dispatch, Lead
from layers.users import SYSTEM
from tests.conftest import CITY, COUNTIES, NOW, TOWNSHIPS, Db

T1 = NOW + timedelta(days=10)
T2 = NOW + timedelta(days=20)
NAMES = {"320001001": "甲一镇", "320001002": "甲二镇", "320002001": "乙一镇", "320002002": "乙二镇",
         "320001003": "甲三镇"}


def write_split_layer(folder: Path) -> dict[str, Path]:
    """The tiny layer with township 320001001 split at lon 117.05 into 001 (west) and 003 (east)."""
    folder.mkdir(parents=True, exist_ok=True)
    towns = {k: v for k, v in TOWNSHIPS.items() if k != "320001001"}
    towns["320001001"] = ("320001", box(117.00, 34.00, 117.05, 34.05))
    towns["320001003"] = ("320001", box(117.05, 34.00, 117.10, 34.05))
    frames = {
        "city": gpd.GeoDataFrame({"code": ["320000"], "name": ["测试市"]}, geometry=[CITY], crs=4326),
        "county": gpd.GeoDataFrame({"code": list(COUNTIES), "name": ["甲县", "乙县"], "parent": ["320000"] * 2},
                                   geometry=list(COUNTIES.values()), crs=4326),
        "township": gpd.GeoDataFrame({"code": list(towns), "name": [NAMES[c] for c in towns],
                                      "parent": [v[0] for v in towns.values()]},
                                     geometry=[v[1] for v in towns.values()], crs=4326),
    }
    out = {}
    for level, f in frames.items():
        out[level] = folder / f"{level}.geojson"
        f.to_file(out[level], driver="GeoJSON", engine="pyogrio")
    return out


def stage_split(db: Db, tmp_path: Path, layer: str = "split") -> None:
    paths = write_split_layer(tmp_path / layer)
    with db.uow() as s:
        for level in ("city", "county", "township"):
            jurisdictions.import_layer(s, paths[level], level=level, datum="wgs84", layer=layer, actor="gis",
                                       now=NOW, mapping="code=code,name=name" + (",parent=parent" if level != "city"
                                                                                 else ""))


def submit(db: Db) -> dict[str, int]:
    items = [
        leads.LeadIn("12345", "west", "catering_fumes", NOW, lon=117.02, lat=34.02),    # stays in 001
        leads.LeadIn("12345", "east", "catering_fumes", NOW, lon=117.07, lat=34.02),    # moves to 003
        leads.LeadIn("12345", "east2", "industrial_gas", NOW, lon=117.09, lat=34.04),   # moves to 003
        leads.LeadIn("12345", "closed", "catering_fumes", NOW, lon=117.08, lat=34.03),  # closed: stays
        leads.LeadIn("12345", "other", "catering_fumes", NOW, lon=117.15, lat=34.07),   # elsewhere
    ]
    with db.uow() as s:
        out = leads.submit(s, items, actor="test", now=NOW)
        ids = {it.external_id: o.lead_id for it, o in zip(items, out, strict=True)}
        s.execute(update(Lead).where(Lead.id == ids["closed"]).values(status="closed", closed_at=NOW))
    return ids


def township(db: Db, lead_id: int) -> str | None:
    with db.uow() as s:
        return s.scalar(select(Lead.township_code).where(Lead.id == lead_id))


def test_split_preview_activate_closed_rollback_and_history(seeded: Db, tmp_path: Path) -> None:
    ids = submit(seeded)
    stage_split(seeded, tmp_path)

    with seeded.uow() as s:
        p = boundary_review.preview(s, "split")
    assert [e["code"] for e in p.jurisdictions.added] == ["320001003"]
    assert [e["code"] for e in p.jurisdictions.changed] == ["320001001"], p.jurisdictions.changed
    assert p.jurisdictions.changed[0]["geometry_m2"] > 2e7 and not p.jurisdictions.removed
    assert sorted(p.leads.frame["id"]) == sorted([ids["east"], ids["east2"]])
    assert p.leads.checked == 4  # the closed lead is not even considered
    assert {(x["from"], x["to"]) for x in p.leads.pairs()} == {("320001001", "320001003")}
    assert sum(x["count"] for x in p.leads.pairs()) == 2
    assert "320001001 → 320001003" in p.to_text()

    with seeded.uow() as s:
        before_index = jurisdictions.INDEX_CACHE.get(s)
        rep = jurisdictions.activate_layer(s, "split", actor="gis", now=T1)
    assert rep.leads_moved == 2 and sorted(rep.moved_lead_ids) == sorted([ids["east"], ids["east2"]])
    with seeded.uow() as s:
        # Every worker's cache notices the new active version on its next call.
        after_index = jurisdictions.INDEX_CACHE.get(s)
        assert after_index is not None and before_index is not None
        assert after_index.version == str(rep.version.id) != before_index.version
        changed = s.scalars(select(Dispatch).where(Dispatch.trigger == "boundary_change")).all()
        assert sorted(d.lead_id for d in changed) == sorted([ids["east"], ids["east2"]])
        assert {d.township_code for d in changed} == {"320001003"}
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "lead.redispatch")).all()
        assert sorted(int(e.entity_id) for e in events) == sorted([ids["east"], ids["east2"]])
        assert events[0].before["township_code"] == "320001001" and events[0].after["township_code"] == "320001003"
        # The receiving body and township are notified, once per moved lead.
        from layers.workflow.store import WfNotice

        notes = s.scalars(select(WfNotice).where(WfNotice.kind == "redispatch")).all()
        assert sorted(n.lead_id for n in notes) == sorted([ids["east"], ids["east2"]])
        assert {n.to_jurisdiction for n in notes} == {"320001003"} and all(n.to_body for n in notes)
        assert audit.verify(s).ok
    assert township(seeded, ids["east"]) == "320001003"
    assert township(seeded, ids["west"]) == "320001001"
    assert township(seeded, ids["closed"]) == "320001001"  # handled under the old boundaries
    assert township(seeded, ids["other"]) == "320002002"

    with seeded.uow() as s:
        # History: which township held the east point, before and after the split.
        assert jurisdictions.township_at(s, 117.07, 34.02, at=NOW + timedelta(days=1))["township"]["code"] \
            == "320001001"
        assert jurisdictions.township_at(s, 117.07, 34.02, at=T1 + timedelta(days=1))["township"]["code"] \
            == "320001003"
        h = jurisdictions.lead_history(s, SYSTEM, str(ids["east"]))
        assert h["at_receipt"]["township_code"] == "320001001" and h["current"]["township_code"] == "320001003"
        assert [d["trigger"] for d in h["dispatches"]] == ["intake", "boundary_change"]

    with seeded.uow() as s:
        back = jurisdictions.rollback(s, actor="gis", now=T2)
    assert back.version.layer == "tiny" and back.previous == "split" and back.leads_moved == 2
    assert township(seeded, ids["east"]) == "320001001"
    assert township(seeded, ids["east2"]) == "320001001"
    assert township(seeded, ids["closed"]) == "320001001"
    with seeded.uow() as s:
        assert jurisdictions.active_version(s).layer == "tiny"  # type: ignore[union-attr]
        # Periods stay exact across the rollback: split held [T1, T2), tiny before and after.
        at = {d: jurisdictions.version_at(s, d).layer for d in  # type: ignore[union-attr]
              (NOW + timedelta(days=1), T1 + timedelta(days=1), T2 + timedelta(days=1))}
        assert list(at.values()) == ["tiny", "split", "tiny"]
        assert jurisdictions.township_at(s, 117.07, 34.02, at=T1 + timedelta(days=1))["township"]["code"] \
            == "320001003"
        assert audit.verify(s).ok


def test_activation_is_blocked_by_validation_errors(seeded: Db, tmp_path: Path) -> None:
    import pytest

    from layers.errors import Conflict

    bad = tmp_path / "bad.geojson"
    gpd.GeoDataFrame({"code": ["320001", "320002"], "name": ["甲", "乙"]},
                     geometry=[box(117.0, 34.0, 117.12, 34.1), box(117.10, 34.0, 117.2, 34.1)], crs=4326).to_file(
        bad, driver="GeoJSON", engine="pyogrio")
    with seeded.uow() as s:
        rep = jurisdictions.import_layer(s, bad, level="county", datum="wgs84", mapping="code=code,name=name",
                                         layer="overlapping", actor="gis", now=NOW)
    assert [f.kind for f in rep.validation.errors] == ["overlap"]
    with pytest.raises(Conflict, match="overlap"), seeded.uow() as s:
        jurisdictions.activate_layer(s, "overlapping", actor="gis", now=T1)
    with seeded.uow() as s:
        assert jurisdictions.active_version(s).layer == "tiny"  # type: ignore[union-attr]


def test_lead_taken_in_while_a_switch_starts_is_redispatched_not_lost(seeded: Db, tmp_path: Path) -> None:
    """An intake in flight holds the active version; activation waits for it, then moves the lead."""
    import threading

    stage_split(seeded, tmp_path)
    intake = seeded.sessions()
    try:
        out = leads.submit(intake, [leads.LeadIn("12345", "inflight", "catering_fumes", NOW, lon=117.07, lat=34.02)],
                           actor="test", now=NOW)
        assert out[0].assignment["township_code"] == "320001001"  # the old layer, not yet committed
        report: dict[str, object] = {}

        def switch() -> None:
            with seeded.uow() as s:
                report["rep"] = jurisdictions.activate_layer(s, "split", actor="gis", now=T1)

        t = threading.Thread(target=switch)
        t.start()
        t.join(1.5)
        assert t.is_alive(), "activation must wait for the intake in flight"
        intake.commit()
    finally:
        intake.close()
    t.join(60)
    assert not t.is_alive()
    rep = report["rep"]
    assert out[0].lead_id in rep.moved_lead_ids  # type: ignore[attr-defined]
    assert township(seeded, out[0].lead_id) == "320001003"


def test_lookup_cache_trusts_a_recent_check_but_sees_its_own_activation_at_once(seeded: Db, tmp_path: Path) -> None:
    """``max_age``: a switch made elsewhere is seen after the age; one committed here at once."""
    stage_split(seeded, tmp_path)
    cache = jurisdictions.INDEX_CACHE
    with seeded.uow() as s:
        first = cache.get(s, max_age=60)
        split_id = s.scalar(select(BoundaryVersion.id).where(BoundaryVersion.layer == "split"))
        old_id = s.scalar(select(BoundaryVersion.id).where(BoundaryVersion.status == "active"))
    assert first is not None and first.version == str(old_id)
    # Another worker switches versions (simulated by writing the rows directly: no event here).
    with seeded.uow() as s:
        s.execute(update(BoundaryVersion).where(BoundaryVersion.id == old_id).values(status="retired"))
        s.execute(update(BoundaryVersion).where(BoundaryVersion.id == split_id).values(status="active"))
    with seeded.uow() as s:
        assert cache.get(s, max_age=60) is first  # trusted: checked less than 60 s ago
        fresh = cache.get(s)  # no max_age: asks the database
        assert fresh is not None and fresh.version == str(split_id)
        assert cache.get(s, max_age=60) is fresh
    # Back, through this process's own rollback: seen at once although the last check is recent.
    with seeded.uow() as s:
        rep = jurisdictions.rollback(s, actor="gis", now=T1)
    assert rep.version.id == old_id
    with seeded.uow() as s:
        again = cache.get(s, max_age=60)
        assert again is not None and again.version == str(old_id)
