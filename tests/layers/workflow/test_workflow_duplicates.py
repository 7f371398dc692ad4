"""Duplicates and rebounds at intake, merged children's feedback, the dispatcher's queue (both backends)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from layers import audit, leads
from layers.errors import Conflict, Forbidden
from layers.models import AuditEvent, Lead
from layers.workflow import duplicates as dup
from layers.workflow import service as wf
from layers.workflow.store import WfCase, WfClock, WfNotice
from tests.conftest import NOW, Db
from tests.layers.workflow.test_workflow_service import (
    DISPATCHER,
    FIELD_A,
    INSPECTOR,
    LEADER,
    PATHS,
    P,
    act,
)

LON, LAT = 117.05, 34.02
# ~1.11 m per 1e-5 degree of latitude here: 0.0008° ≈ 89 m, 0.0012° ≈ 133 m.
NEAR, FAR = 0.0008, 0.0012


def take(db: Db, ext: str, *, at: datetime = NOW, dlat: float = 0.0,
         category: str = "catering_fumes") -> str:
    item = leads.LeadIn(channel="12345", external_id=ext, category=category, reported_at=at,
                        lon=LON, lat=LAT + dlat)
    with db.uow() as s:
        return leads.submit(s, [item], actor="test", now=at)[0].code


def case(db: Db, code: str) -> WfCase:
    with db.uow() as s:
        lid = s.scalar(select(Lead.id).where(Lead.code == code))
        row = s.get(WfCase, lid)
        assert row is not None
        s.expunge(row)
        return row


def lead_id(db: Db, code: str) -> int:
    with db.uow() as s:
        return int(s.scalar(select(Lead.id).where(Lead.code == code)) or 0)


def close(db: Db, code: str, start: datetime) -> datetime:
    t = start
    for who, action, payload in PATHS["closed"]:
        t += timedelta(minutes=5)
        act(db, who, code, action, payload, at=t)
    return t


# ------------------------------------------------------------------------------- duplicates


def test_duplicate_proposed_within_distance_and_time_only(seeded: Db) -> None:
    first = take(seeded, "d1")
    near = take(seeded, "d2", dlat=NEAR, at=NOW + timedelta(hours=1))
    far = take(seeded, "d3", dlat=FAR, at=NOW + timedelta(hours=1))
    late = take(seeded, "d4", dlat=-NEAR, at=NOW + timedelta(hours=80))  # window is 72 h
    other = take(seeded, "d5", category="construction_dust", at=NOW + timedelta(hours=1))
    c = case(seeded, near)
    assert c.duplicate_of_id == lead_id(seeded, first)
    assert c.duplicate_m is not None and 85 < c.duplicate_m < 92
    # 133 m from d1, but 44 m from d2 (itself open): proposed as a duplicate of d2, the nearest.
    assert case(seeded, far).duplicate_of_id == lead_id(seeded, near)
    # 80 h after d1 and d2, 178 m from d3 (reported 79 h before): nothing in the window.
    assert case(seeded, late).duplicate_of_id is None
    assert case(seeded, other).duplicate_of_id is None  # other category
    assert case(seeded, first).duplicate_of_id is None  # the earlier lead is never the duplicate
    with seeded.uow() as s:
        q = dup.dispatcher_queue(s, DISPATCHER, kind="duplicates")
        assert [(i["code"], i["duplicate_of"]) for i in q["items"]] == [(near, first), (far, near)]
        assert dup.case_links(s, lead_id(seeded, near))["duplicate_of"] == first


def test_distance_and_window_come_from_settings(seeded: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADGRID_DUPLICATE_DISTANCE_M", "50")
    first = take(seeded, "s1")
    near = take(seeded, "s2", dlat=NEAR)  # 89 m > 50 m
    assert case(seeded, near).duplicate_of_id is None
    monkeypatch.setenv("LEADGRID_DUPLICATE_DISTANCE_M", "150")
    assert case(seeded, take(seeded, "s3", dlat=FAR)).duplicate_of_id in {
        lead_id(seeded, first), lead_id(seeded, near)}


def test_one_batch_proposes_within_itself_and_merge_settles_it(seeded: Db) -> None:
    items = [leads.LeadIn(channel="12345", external_id=f"b{i}", category="catering_fumes",
                          reported_at=NOW, lon=LON, lat=LAT + i * 0.0001) for i in range(3)]
    with seeded.uow() as s:
        codes = [o.code for o in leads.submit(s, items, actor="test", now=NOW)]
    ids = [lead_id(seeded, c) for c in codes]
    # b1 is 11 m from b0, b2 is 11 m from b1 and 22 m from b0: each proposes its nearest elder.
    assert [case(seeded, c).duplicate_of_id for c in codes] == [None, ids[0], ids[1]]
    out = act(seeded, DISPATCHER, codes[1], "merge", {"parent_id": codes[0]})
    assert out.state_after == "merged"
    c1 = case(seeded, codes[1])
    assert c1.duplicate_of_id is None and c1.feedback_owed
    with seeded.uow() as s:
        ev = s.scalars(select(AuditEvent.action).where(
            AuditEvent.entity_id == str(ids[1])).order_by(AuditEvent.seq)).all()
        assert ev[-1] == "lead.merge"
        assert [i["code"] for i in dup.dispatcher_queue(s, DISPATCHER, kind="duplicates")["items"]] \
            == [codes[2]]


def test_dismiss_a_proposal_is_audited_and_dispatcher_only(seeded: Db) -> None:
    first = take(seeded, "x1")
    second = take(seeded, "x2", dlat=NEAR)
    with seeded.uow() as s, pytest.raises(Forbidden):
        dup.dismiss_duplicate(s, FIELD_A, second, now=NOW)
    with seeded.uow() as s:
        out = dup.dismiss_duplicate(s, DISPATCHER, second, now=NOW, reason="two restaurants")
    assert out == {"lead": second, "dismissed": first}
    assert case(seeded, second).duplicate_of_id is None
    with seeded.uow() as s:
        ev = s.scalars(select(AuditEvent).where(AuditEvent.action == "lead.duplicate_dismiss")).one()
        assert ev.reason == "two restaurants" and ev.before["duplicate_of"] == first
        assert audit.verify(s).ok
    with seeded.uow() as s, pytest.raises(Conflict, match="no duplicate proposal"):
        dup.dismiss_duplicate(s, DISPATCHER, second, now=NOW)


# --------------------------------------------------------------------------------- rebounds


def test_rebound_within_n_days_counts_against_the_closure(seeded: Db) -> None:
    old = take(seeded, "r1")
    closed_at = close(seeded, old, NOW)
    back = take(seeded, "r2", dlat=NEAR, at=closed_at + timedelta(days=10))
    too_late = take(seeded, "r3", dlat=-NEAR, at=closed_at + timedelta(days=91))  # N = 90
    elsewhere = take(seeded, "r4", dlat=FAR * 2, at=closed_at + timedelta(days=10))
    b = case(seeded, back)
    assert b.rebound_of_id == lead_id(seeded, old) and b.duplicate_of_id is None
    assert case(seeded, too_late).rebound_of_id is None
    assert case(seeded, elsewhere).rebound_of_id is None
    o = case(seeded, old)
    assert o.rebound_count == 1
    as_of = closed_at + timedelta(days=100)
    with seeded.uow() as s:
        ev = s.scalars(select(AuditEvent).where(AuditEvent.action == "lead.rebound")).one()
        assert ev.entity_id == str(lead_id(seeded, old)) and ev.after == {
            "rebound_leads": [lead_id(seeded, back)]}
        reb = wf.oversight(s, INSPECTOR, "rebounds", now=as_of)
        (g,) = wf.kpis(s, INSPECTOR, by="county", now=as_of)["groups"]
        links = dup.case_links(s, lead_id(seeded, old))
    # The closure that rebounded is listed (with its body), not the new complaint.
    assert [i["code"] for i in reb["items"]] == [old] and reb["items"][0]["rebound_count"] == 1
    # 重复投诉率: 1 closed case, rebounded → 1.0; the four new leads are open.
    assert (g["closed"], g["repeated"], g["repeat"]) == (1, 1, 1.0)
    assert links["rebounds"] == [back] and links["rebound_count"] == 1


def test_rebound_of_the_latest_closure_and_repeat_rate(seeded: Db) -> None:
    a, b, c = take(seeded, "q1"), take(seeded, "q2", dlat=0.0002), take(seeded, "q3", dlat=0.01)
    ta = close(seeded, a, NOW)
    tb = close(seeded, b, ta + timedelta(days=1))
    tc = close(seeded, c, tb)
    new = take(seeded, "q4", dlat=0.0001, at=tc + timedelta(days=2))
    assert case(seeded, new).rebound_of_id == lead_id(seeded, b)  # b closed last
    with seeded.uow() as s:
        (g,) = wf.kpis(s, LEADER, by="county", now=tc + timedelta(days=3))["groups"]
    assert (g["closed"], g["repeated"]) == (3, 1) and g["repeat"] == round(1 / 3, 4)


# -------------------------------------------------------------------- merged child's feedback


def test_merged_child_keeps_its_own_feedback_obligation(seeded: Db) -> None:
    parent = take(seeded, "m1")
    child = take(seeded, "m2", dlat=NEAR, at=NOW + timedelta(hours=2))
    t = NOW + timedelta(hours=3)
    act(seeded, DISPATCHER, child, "merge", {"parent_id": parent}, at=t)
    note = {"feedback_note": "告知投诉人: 已整改"}
    with pytest.raises(Conflict, match="waits for the parent to close"):
        act(seeded, DISPATCHER, child, "feedback", note, at=t)
    with seeded.uow() as s:
        assert dup.dispatcher_queue(s, DISPATCHER, kind="feedback_owed")["total"] == 0
    closed = close(seeded, parent, t)
    cid = lead_id(seeded, child)
    with seeded.uow() as s:
        fb = s.scalars(select(WfClock).where(WfClock.lead_id == cid, WfClock.node == "feedback")).one()
        assert fb.stopped_at is None and fb.started_at == closed and fb.due_at is not None
        notice = s.scalars(select(WfNotice).where(WfNotice.lead_id == cid)).one()
        assert notice.kind == "feedback" and notice.to_jurisdiction == "320001"
        q = dup.dispatcher_queue(s, DISPATCHER, kind="feedback_owed")
        assert [(i["code"], i["parent"]) for i in q["items"]] == [(child, parent)]
        owed = wf.oversight(s, INSPECTOR, "feedback_owed", now=closed)
        assert [i["code"] for i in owed["items"]] == [child] and owed["by_county"] == {"320001": 1}
        links = dup.case_links(s, lead_id(seeded, parent))
        assert links["merged_children"][0]["lead"] == child and links["merged_children"][0]["feedback_owed"]
    with pytest.raises(Forbidden):
        act(seeded, FIELD_A, child, "feedback", note, at=closed)
    out = act(seeded, DISPATCHER, child, "feedback", note, at=closed + timedelta(hours=1))
    assert out.state_after == "merged" and out.clocks == [
        {"op": "stop", "node": "feedback", "clock_id": out.clocks[0]["clock_id"]}]
    c = case(seeded, child)
    assert not c.feedback_owed and c.feedback_at is not None
    with seeded.uow() as s:
        assert s.get(WfClock, out.clocks[0]["clock_id"]).stop_action == "feedback"  # type: ignore[union-attr]
        assert dup.dispatcher_queue(s, DISPATCHER, kind="feedback_owed")["total"] == 0
        assert wf.oversight(s, INSPECTOR, "feedback_owed", now=closed)["total"] == 0
        assert audit.verify(s).ok
    with pytest.raises(Conflict, match="already given"):
        act(seeded, DISPATCHER, child, "feedback", note, at=closed + timedelta(hours=2))


def test_merge_into_an_already_closed_parent_owes_feedback_at_once(seeded: Db) -> None:
    parent = take(seeded, "k1")
    closed = close(seeded, parent, NOW)
    child = take(seeded, "k2", at=closed + timedelta(hours=1))
    act(seeded, DISPATCHER, child, "merge", {"parent_id": parent}, at=closed + timedelta(hours=2))
    with seeded.uow() as s:
        assert [i["code"] for i in dup.dispatcher_queue(s, DISPATCHER, kind="feedback_owed")["items"]] \
            == [child]
        other = P("d2", "dispatcher", codes=("320002",))
        assert dup.dispatcher_queue(s, other, kind="feedback_owed")["total"] == 0  # scope applies


def test_queue_kind_is_checked(seeded: Db) -> None:
    with seeded.uow() as s, pytest.raises(Exception, match="kind"):
        dup.dispatcher_queue(s, DISPATCHER, kind="gossip")
