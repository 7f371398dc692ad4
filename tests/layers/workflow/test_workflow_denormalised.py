"""The KPI columns copied onto ``wf_cases`` stay equal to their sources, whatever writes them.

The copies of lead columns and the per-node sums of finished clocks are kept by triggers
(migration 0004); these tests write through every path (intake, transitions incl. return and
re-dispatch to another body, reopen, merge, escalation, a direct UPDATE as boundary re-dispatch
does) and compare the case rows, the KPIs and the node times with the same figures computed
straight from ``leads`` and ``wf_clocks`` (the join-based queries the copies replaced).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Float, and_, case, cast, delete, func, insert, select, update

from layers.models import Lead
from layers.workflow import service as wf
from layers.workflow.states import Node
from layers.workflow.store import WfCase, WfClock, WfKpiDaily, WfNodeOtherBodyDaily
from tests.conftest import NOW, Db
from tests.layers.workflow.test_workflow_service import (
    DISPATCHER,
    FIELD_A,
    INSPECTOR,
    LEADER,
    PATHS,
    RECTIFY,
    P,
    act,
    intake,
)

COPIED = {"status": "lead_status", "closed_at": "lead_closed_at", "received_at": "lead_received_at",
          "city_code": "city_code", "county_code": "county_code", "township_code": "township_code",
          "body_code": "body_code"}


def history(db: Db) -> list[str]:
    """Six leads through every kind of writer."""
    t = NOW
    codes = [intake(db, f"h{i}", at=t, lat=34.02 + i * 0.01) for i in range(6)]
    a, b, c, d, e, _f = codes
    for who, action, payload in PATHS["closed"]:
        t += timedelta(hours=3)
        act(db, who, a, action, payload, at=t)
    # b: returned by CMB, re-dispatched to EEB, signed and started by EEB (body changed).
    eeb = P("eebf", "field", codes=("320001",), bodies=("EEB",))
    act(db, FIELD_A, b, "return", {"reason": "wrong_body"}, at=t)
    act(db, DISPATCHER, b, "dispatch", {"body": "EEB"}, at=t + timedelta(hours=1))
    act(db, eeb, b, "sign", at=t + timedelta(hours=2))
    act(db, eeb, b, "start", at=t + timedelta(hours=5))
    # c: closed then reopened (handle clock restarts), then rework.
    tc = t
    for who, action, payload in PATHS["closed"]:
        tc += timedelta(hours=2)
        act(db, who, c, action, payload, at=tc)
    act(db, LEADER, c, "reopen", {"reason": "smoke again"}, at=tc + timedelta(days=1))
    act(db, FIELD_A, c, "rectify", RECTIFY, at=tc + timedelta(days=2))
    act(db, DISPATCHER, c, "verify_fail", {"reason": "still"}, at=tc + timedelta(days=3))
    # d merged into e; e signed.
    act(db, DISPATCHER, d, "merge", {"parent_id": e}, at=t)
    act(db, FIELD_A, e, "sign", at=t)
    # f: escalated (urged, supervised) while unsigned.
    with db.uow() as s:
        wf.escalate(s, NOW + timedelta(days=10))
    return codes


def assert_in_sync(db: Db) -> None:
    with db.uow() as s:
        leads = {r.id: r for r in s.execute(select(Lead.id, *[getattr(Lead, c) for c in COPIED]))}
        cases = s.scalars(select(WfCase)).all()
        assert len(cases) == len(leads)
        for c in cases:
            lead = leads[c.lead_id]
            for src, dst in COPIED.items():
                assert getattr(c, dst) == getattr(lead, src), (c.lead_id, dst)
        secs = cast(wf._seconds(s, WfClock.stopped_at, WfClock.started_at), Float)
        sums = {(r.lead_id, r.node): (int(r.n), float(r.s)) for r in s.execute(
            select(WfClock.lead_id, WfClock.node, func.count().label("n"), func.sum(secs).label("s"))
            .where(WfClock.stopped_at.is_not(None), WfClock.body_code.is_not(None))
            .group_by(WfClock.lead_id, WfClock.node))}
        for c in cases:
            for n in wf.NODE_STATS:
                want = sums.get((c.lead_id, n.value), (0, 0.0))
                assert getattr(c, f"n_{n.value}") == want[0], (c.lead_id, n)
                assert getattr(c, f"s_{n.value}") == pytest.approx(want[1], abs=1e-3), (c.lead_id, n)


def reference_node_hours(s: Any, by: str, since: datetime | None = None,
                         until: datetime | None = None) -> dict[tuple[Any, str], tuple[int, float]]:
    """Time per node the way it was computed before the copies: every clock, joined to its lead."""
    g = WfClock.body_code if by == "body" else getattr(Lead, f"{by}_code")
    secs = cast(wf._seconds(s, WfClock.stopped_at, WfClock.started_at), Float)
    win = ([Lead.received_at >= since] if since else []) + ([Lead.received_at < until] if until else [])
    rows = s.execute(select(g.label("g"), WfClock.node, func.count().label("n"),
                            func.avg(secs).label("m"))
                     .join(Lead, Lead.id == WfClock.lead_id)
                     .where(WfClock.stopped_at.is_not(None), *win).group_by(g, WfClock.node))
    return {(r.g, r.node): (int(r.n), round(float(r.m) / 3600.0, 2)) for r in rows}


def reference_returns(s: Any, by: str) -> dict[Any, tuple[int, int]]:
    """Dispatches and returns straight from the clocks (merged leads left out)."""
    g = WfClock.body_code if by == "body" else getattr(Lead, f"{by}_code")
    rows = s.execute(
        select(g.label("g"),
               func.sum(case((WfClock.node == Node.SIGN.value, 1), else_=0)).label("d"),
               func.sum(case((WfClock.stop_action == "return", 1), else_=0)).label("r"))
        .join(Lead, Lead.id == WfClock.lead_id)
        .where(WfClock.node.in_(["sign", "on_site"]), Lead.status != "merged").group_by(g))
    return {r.g: (int(r.d), int(r.r)) for r in rows}


def test_copies_and_node_sums_follow_every_writer(seeded: Db) -> None:
    codes = history(seeded)
    assert_in_sync(seeded)
    # Boundary re-dispatch and imports write the lead row directly: the trigger follows them.
    with seeded.uow() as s:
        s.execute(update(Lead).where(Lead.code == codes[5])
                  .values(county_code="320002", township_code="320002001", body_code="EEB"))
        s.execute(update(Lead).where(Lead.code == codes[4])
                  .values(status="closed", closed_at=NOW + timedelta(days=1)))
    assert_in_sync(seeded)
    with seeded.uow() as s:
        c5 = s.scalars(select(WfCase).join(Lead, Lead.id == WfCase.lead_id)
                       .where(Lead.code == codes[5])).one()
        assert (c5.county_code, c5.body_code) == ("320002", "EEB")
        # A stopped clock is counted once: stopping it again (no-op update) adds nothing.
        before = c5.n_sign
        s.execute(update(WfClock).where(and_(WfClock.lead_id == c5.lead_id,
                                             WfClock.stopped_at.is_(None), WfClock.node == "sign"))
                  .values(stopped_at=NOW + timedelta(days=2), stop_action="test"))
        s.execute(update(WfClock).where(WfClock.lead_id == c5.lead_id)
                  .values(stopped_at=NOW + timedelta(days=3)))
        s.expire_all()
        assert s.get(WfCase, c5.lead_id).n_sign == before + 1  # type: ignore[union-attr]
    # The running clocks the last update stopped are counted too: still in sync.
    assert_in_sync(seeded)


@pytest.mark.parametrize("by", ["body", "county", "township"])
def test_kpis_and_node_times_equal_the_join_based_figures(seeded: Db, by: str) -> None:
    history(seeded)
    as_of = NOW + timedelta(days=20)
    with seeded.uow() as s:
        got = {g["group"]: g for g in wf.kpis(s, INSPECTOR, by=by, now=as_of)["groups"]}
        ref = reference_returns(s, by)
        hours = {(h["group"], h["node"]): (h["n"], h["mean_hours"])
                 for h in wf.node_hours(s, INSPECTOR, by=by)}
        assert hours == reference_node_hours(s, by)
        scoped = wf.kpis(s, P("i2", "inspector", codes=("320002",)), by=by, now=as_of)
    assert {k: (v.get("dispatches", 0), v.get("returns", 0)) for k, v in got.items()
            if v.get("dispatches") or v.get("returns")} == {k: v for k, v in ref.items() if v[0] or v[1]}
    if by == "body":
        # b's return is CMB's; its second dispatch EEB's.
        assert got["CMB"]["returns"] == 1 and got["EEB"]["dispatches"] == 1
    assert sum(g["cases"] for g in got.values()) == 5  # the merged lead is left out
    assert scoped["groups"] == []


def test_window_on_receipt_time(seeded: Db) -> None:
    first = intake(seeded, "w1", at=NOW)
    intake(seeded, "w2", at=NOW + timedelta(days=3), lat=34.03)
    with seeded.uow() as s:
        res = wf.kpis(s, LEADER, by="county", now=NOW + timedelta(days=4),
                      since=NOW + timedelta(days=1))
        hours = wf.node_hours(s, LEADER, by="county", until=NOW + timedelta(days=1))
    (g,) = res["groups"]
    assert g["cases"] == 1
    assert hours == []  # no finished clock yet
    act(seeded, FIELD_A, first, "sign", at=NOW + timedelta(hours=2))
    with seeded.uow() as s:
        (h,) = wf.node_hours(s, LEADER, by="county", until=datetime(2026, 6, 2, tzinfo=NOW.tzinfo))
    assert (h["node"], h["n"], h["mean_hours"]) == ("sign", 1, 2.0)


@pytest.mark.parametrize("by", ["body", "county"])
def test_daily_rollup_equals_the_per_case_scan(seeded: Db, by: str) -> None:
    """The rollup (whole days) and the per-case scan (any window) give the same figures."""
    codes = history(seeded)
    with seeded.uow() as s:  # a direct write of the lead, as boundary re-dispatch does
        s.execute(update(Lead).where(Lead.code == codes[5]).values(county_code="320002",
                                                                   body_code="EEB"))
    as_of = NOW + timedelta(days=20)
    # Every lead was received at NOW: a window inside that day is scanned case by case, a whole
    # day is read from the rollup, a window with partial days at its edges uses both.
    inside = (NOW - timedelta(hours=1), NOW + timedelta(hours=1))
    day0 = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
    whole = (day0, day0 + timedelta(days=1))
    mixed = (NOW - timedelta(days=1, hours=1), NOW + timedelta(days=2, hours=3))
    assert wf._split_window(*inside) == (None, [])
    assert wf._split_window(*whole) == (whole, [])
    assert len(wf._split_window(*mixed)[1]) == 2
    with seeded.uow() as s:
        figures = [wf.kpis(s, LEADER, by=by, now=as_of, since=a, until=b)["groups"]
                   for a, b in (inside, whole, mixed, (None, None))]
        hours = [sorted(wf.node_hours(s, LEADER, by=by, since=a, until=b), key=str)
                 for a, b in (inside, whole, mixed, (None, None))]
        n_rows = s.scalar(select(func.count()).select_from(WfKpiDaily))
    assert len(figures[0]) >= 2
    for other in figures[1:]:
        diff = {(a["group"], k): (a[k], b[k]) for a, b in zip(figures[0], other, strict=True)
                for k in a if a[k] != b[k]}
        assert not diff
    assert hours[0] == hours[1] == hours[2] == hours[3] and hours[0]
    assert n_rows and n_rows < 10  # one row per day × place × body, not per case


def reference_other_body(s: Any) -> dict[tuple[Any, ...], tuple[int, float]]:
    """``wf_node_other_body_daily`` recomputed from the cases and clocks as they are now."""
    secs = cast(wf._seconds(s, WfClock.stopped_at, WfClock.started_at), Float)
    rows = s.execute(
        select(WfCase.lead_received_at, WfCase.city_code, WfCase.county_code, WfCase.township_code,
               WfCase.body_code, WfClock.body_code.label("clock_body"), WfClock.node,
               secs.label("s"))
        .join(WfClock, WfClock.lead_id == WfCase.lead_id)
        .where(WfClock.stopped_at.is_not(None), WfClock.body_code.is_not(None),
               WfCase.lead_received_at.is_not(None)))
    out: dict[tuple[Any, ...], tuple[int, float]] = {}
    for r in rows:
        if r.clock_body == (r.body_code or ""):
            continue
        key = (r.lead_received_at.astimezone(UTC).date(), r.city_code or "", r.county_code or "",
               r.township_code or "", r.body_code or "", r.clock_body, r.node)
        n, total = out.get(key, (0, 0.0))
        out[key] = (n + 1, total + float(r.s))
    return out


def assert_other_body_rollup(db: Db, *, hours: bool = True) -> dict[tuple[Any, ...], tuple[int, float]]:
    """The trigger-kept rollup equals its recomputation; node times by body (unless ``hours`` is
    false: a lead without its case) equal the clocks' in every kind of window."""
    with db.uow() as s:
        want = reference_other_body(s)
        have = {(r.day, r.city_code, r.county_code, r.township_code, r.body_code,
                 r.clock_body_code, r.node): (r.n, r.s)
                for r in s.scalars(select(WfNodeOtherBodyDaily))}
        day0 = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
        windows = [(None, None), (day0, day0 + timedelta(days=1)),
                   (NOW - timedelta(hours=1), NOW + timedelta(days=1, hours=1))]
        figures = [{(h["group"], h["node"]): (h["n"], h["mean_hours"])
                    for h in wf.node_hours(s, LEADER, by="body", since=a, until=b)}
                   for a, b in windows]
        refs = [reference_node_hours(s, "body", a, b) for a, b in windows]
    assert {k: v[0] for k, v in have.items() if v[0]} == {k: v[0] for k, v in want.items()}
    for k, (_n, total) in have.items():
        assert total == pytest.approx(want.get(k, (0, 0.0))[1], abs=1e-3), k
    for w, h, ref in zip(windows, figures, refs, strict=True):
        assert h == ref or not hours, (w, sorted(set(h.items()) ^ set(ref.items())))
    return want


def test_other_body_rollup_follows_every_writer(seeded: Db) -> None:
    """Clocks that ran with another body than their case's: kept by triggers on both tables."""
    codes = history(seeded)
    moved = assert_other_body_rollup(seeded)
    # b's accept and sign clocks, stopped by CMB's return, count for CMB; its case is EEB's now.
    assert {(k[4], k[5], k[6]): v[0] for k, v in moved.items()} == {
        ("EEB", "CMB", "accept"): 1, ("EEB", "CMB", "sign"): 1}
    with seeded.uow() as s:
        ids = {r.code: r.id for r in s.execute(select(Lead.code, Lead.id))}
        # Boundary re-dispatch writes the lead's body directly (no return): the clocks f ran
        # with CMB stay CMB's once they stop.
        s.execute(update(Lead).where(Lead.code == codes[5])
                  .values(county_code="320002", township_code="320002001", body_code="EEB"))
        s.execute(update(WfClock).where(WfClock.lead_id == ids[codes[5]],
                                        WfClock.stopped_at.is_(None))
                  .values(stopped_at=NOW + timedelta(days=2), stop_action="test"))
    moved = assert_other_body_rollup(seeded)
    assert ("EEB", "CMB", "sign") in {(k[4], k[5], k[6]) for k in moved if k[2] == "320002"}
    with seeded.uow() as s:
        # A clock's body corrected, a case received on another day, a duration corrected.
        s.execute(update(WfClock).where(WfClock.lead_id == ids[codes[1]],
                                        WfClock.stop_action == "return").values(body_code="EEB"))
        s.execute(update(Lead).where(Lead.code == codes[0])
                  .values(received_at=NOW - timedelta(days=1), body_code="WATER"))
        s.execute(update(WfClock).where(WfClock.lead_id == ids[codes[5]], WfClock.node == "sign")
                  .values(started_at=NOW - timedelta(hours=5)))
    moved = assert_other_body_rollup(seeded)
    assert ("WATER", "CMB", "handle") in {(k[4], k[5], k[6]) for k in moved}
    # Deletes from either side, and a case inserted after its clocks. (Only a lead's cascade
    # deletes clocks: the per-case node sums of 0004 do not follow a clock deleted alone, so
    # node times are not compared from here on.)
    with seeded.uow() as s:
        s.execute(delete(WfClock).where(WfClock.lead_id == ids[codes[5]], WfClock.node == "sign"))
        row = s.execute(select(WfCase.__table__).where(WfCase.lead_id == ids[codes[0]])).one()
        s.execute(delete(WfCase).where(WfCase.lead_id == ids[codes[0]]))
    assert not [k for k in assert_other_body_rollup(seeded, hours=False) if k[4] == "WATER"]
    with seeded.uow() as s:
        s.execute(insert(WfCase.__table__).values(**row._asdict()))
    moved = assert_other_body_rollup(seeded, hours=False)
    assert ("WATER", "CMB", "handle") in {(k[4], k[5], k[6]) for k in moved}
