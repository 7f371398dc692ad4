"""The workflow persisted, on SpatiaLite and PostGIS: transitions, deadlines, escalation, KPIs."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

from layers import audit, leads
from layers.errors import Conflict, Forbidden, Invalid, NotFound
from layers.models import AuditEvent, Lead
from layers.users import Principal
from layers.workflow import service as wf
from layers.workflow.calendar import parse_holiday_notice
from layers.workflow.states import State
from layers.workflow.store import WfCase, WfClock, WfEvidence, WfNotice
from layers.workflow.transitions import default_table
from tests.conftest import NOW, Db

SH = ZoneInfo("Asia/Shanghai")


def P(name: str, *roles: str, codes: tuple[str, ...] = (), bodies: tuple[str, ...] = ()) -> Principal:
    return Principal(name, frozenset(roles), frozenset(codes), frozenset(bodies))


DISPATCHER = P("disp", "dispatcher")
LEADER = P("boss", "leader")
ADMIN = P("root", "admin")
INSPECTOR = P("insp", "inspector")
GIS = P("gisuser", "gis")
FIELD_A = P("fa", "field", codes=("320001",))
FIELD_A2 = P("fa2", "field", codes=("320001",))
FIELD_B = P("fb", "field", codes=("320002",))
ROLE_USERS = {"admin": ADMIN, "dispatcher": DISPATCHER, "leader": LEADER, "field": FIELD_A,
              "gis": GIS, "inspector": INSPECTOR}

RECTIFY = {"evidence_note": "fume filter installed", "photo_refs": ["p/1.jpg", "p/2.jpg"],
           "gps_lon": 117.051, "gps_lat": 34.021}


def intake(db: Db, ext: str, *, at: datetime = NOW, lon: float | None = 117.05,
           lat: float | None = 34.02, channel: str = "12345",
           category: str = "catering_fumes") -> str:
    item = leads.LeadIn(channel=channel, external_id=ext, category=category, reported_at=at,
                        lon=lon, lat=lat)
    with db.uow() as s:
        return leads.submit(s, [item], actor="test", now=at)[0].code


def act(db: Db, who: Principal, code: str, action: str, payload: dict[str, Any] | None = None,
        at: datetime = NOW, **kw: Any) -> wf.TransitionOutcome:
    with db.uow() as s:
        return wf.transition(s, who, code, action, payload or {}, at, **kw)


def clocks(db: Db, code: str) -> list[WfClock]:
    with db.uow() as s:
        lid = s.scalar(select(Lead.id).where(Lead.code == code))
        return list(s.scalars(select(WfClock).where(WfClock.lead_id == lid).order_by(WfClock.id)))


def running(db: Db, code: str) -> dict[str, WfClock]:
    return {c.node: c for c in clocks(db, code) if c.stopped_at is None}


# ----------------------------------------------------------------------------- the closed loop


def test_full_loop_persists_state_clocks_evidence_and_audit(seeded: Db) -> None:
    code = intake(seeded, "loop")
    assert set(running(seeded, code)) == {"sign", "conclude"}  # dispatched at intake
    t = NOW
    steps = [
        (FIELD_A, "sign", {}), (FIELD_A, "start", {}), (FIELD_A, "rectify", RECTIFY),
        (DISPATCHER, "verify_pass", {}), (DISPATCHER, "feedback", {"feedback_note": "told"}),
        (DISPATCHER, "return_visit", {"satisfaction": "satisfied"}), (DISPATCHER, "close", {}),
    ]
    version = 1
    for who, action, payload in steps:
        t += timedelta(hours=1)
        out = act(seeded, who, code, action, payload, at=t)
        assert out.version == version + 1
        version = out.version
    assert out.state_after == "closed"
    assert running(seeded, code) == {}
    nodes = [c.node for c in clocks(seeded, code)]
    assert nodes == ["sign", "conclude", "on_site", "handle", "verify", "feedback", "return_visit"]
    with seeded.uow() as s:
        lead = s.scalar(select(Lead).where(Lead.code == code))
        assert lead.closed_at == t and lead.status == "closed"
        case = s.get(WfCase, lead.id)
        assert case.assignee_id == "fa" and case.satisfaction == "satisfied"
        assert case.first_signed_at == NOW + timedelta(hours=1)
        ev = s.scalar(select(WfEvidence).where(WfEvidence.kind == "rectify"))
        assert ev.photo_refs == ["p/1.jpg", "p/2.jpg"] and ev.geom is not None
        actions = s.scalars(select(AuditEvent.action).where(
            AuditEvent.entity == "lead", AuditEvent.entity_id == str(lead.id))
            .order_by(AuditEvent.seq)).all()
        assert actions == ["lead.intake"] + [f"lead.{a}" for _, a, _ in steps]
        assert audit.verify(s).ok


# ------------------------------------------------------------- every transition, by role


PAYLOADS: dict[str, dict[str, Any]] = {
    "dispatch": {"body": "CMB"}, "return": {"reason": "wrong_body"}, "rectify": RECTIFY,
    "verify_fail": {"reason": "still smoking"}, "feedback": {"feedback_note": "done"},
    "return_visit": {"satisfaction": "satisfied"}, "extension_request": {"reason": "parts", "days": 2},
    "extension_refuse": {"reason": "no"}, "reopen": {"reason": "complaint again"},
    "reopen_redispatch": {"reason": "complaint again", "body": "EEB"},
}
# How to bring a freshly dispatched lead into each state (as the right people).
PATHS: dict[str, list[tuple[Principal, str, dict[str, Any]]]] = {
    "dispatched": [],
    "signed": [(FIELD_A, "sign", {})],
    "in_progress": [(FIELD_A, "sign", {}), (FIELD_A, "start", {})],
    "rectified": [(FIELD_A, "sign", {}), (FIELD_A, "start", {}), (FIELD_A, "rectify", RECTIFY)],
    "verified": [(FIELD_A, "sign", {}), (FIELD_A, "start", {}), (FIELD_A, "rectify", RECTIFY),
                 (DISPATCHER, "verify_pass", {})],
    "returned": [(FIELD_A, "return", {"reason": "wrong_body"})],
}
PATHS["feedback"] = [*PATHS["verified"], (DISPATCHER, "feedback", {"feedback_note": "ok"})]
PATHS["return_visit"] = [*PATHS["feedback"],
                         (DISPATCHER, "return_visit", {"satisfaction": "satisfied"})]
PATHS["closed"] = [*PATHS["return_visit"], (DISPATCHER, "close", {})]
# Merged into a parent that then closed (built in the test: the parent is a second lead).
PATHS["merged"] = []

CASES = []
for rule in default_table().rules:
    # One representative start state per row (received needs an unlocated lead: use returned).
    start = next(s.value for s in sorted(rule.from_states) if s.value in PATHS)
    for role in ROLE_USERS:
        CASES.append((rule.action.value, start, role, role in {r.value for r in rule.roles},
                      rule.line))


@pytest.mark.parametrize(("action", "start", "role", "allowed", "line"), CASES,
                         ids=[f"{c[0]}-L{c[4]}-{c[1]}-{c[2]}" for c in CASES])
def test_every_transition_by_role(seeded: Db, action: str, start: str, role: str, allowed: bool,
                                  line: int) -> None:
    code = intake(seeded, f"r-{action}-{line}-{role}")
    t = NOW
    for who, a, payload in PATHS[start]:
        t += timedelta(minutes=5)
        act(seeded, who, code, a, payload, at=t)
    if start == "merged":
        parent = intake(seeded, f"rp-{action}-{line}-{role}")
        act(seeded, DISPATCHER, code, "merge", {"parent_id": parent}, at=t)
        for who, a, payload in PATHS["closed"]:
            t += timedelta(minutes=5)
            act(seeded, who, parent, a, payload, at=t)
    payload = dict(PAYLOADS.get(action, {}))
    if action == "close" and start == "feedback":
        payload = {"reason": "complainant unreachable"}
    if action in ("extension_approve", "extension_refuse"):
        act(seeded, FIELD_A, code, "extension_request", {"reason": "parts", "days": 2}, at=t)
    if action == "merge":
        payload = {"parent_id": intake(seeded, f"parent-{line}-{role}")}
    who = ROLE_USERS[role]
    t += timedelta(minutes=5)
    if allowed:
        out = act(seeded, who, code, action, payload, at=t)
        assert out.action == action
    else:
        with pytest.raises(Forbidden, match="needs one of the roles"):
            act(seeded, who, code, action, payload, at=t)


def test_refusals_name_what_is_wrong(seeded: Db) -> None:
    code = intake(seeded, "refuse")
    # Out of scope reads as absent.
    with pytest.raises(NotFound):
        act(seeded, FIELD_B, code, "sign")
    with pytest.raises(NotFound):
        act(seeded, P("d2", "dispatcher", codes=("320002",)), code, "return")
    with pytest.raises(Invalid, match="'teleport' is not valid; one of"):
        act(seeded, FIELD_A, code, "teleport")
    with pytest.raises(Conflict, match="not allowed from state 'dispatched'"):
        act(seeded, DISPATCHER, code, "close")
    with pytest.raises(Invalid, match="fixed reasons") as exc:
        act(seeded, FIELD_A, code, "return", {"reason": "bored"})
    assert exc.value.field == "reason"
    with pytest.raises(Forbidden, match=r"needs one of the roles \['field'\]"):
        act(seeded, DISPATCHER, code, "return", {"reason": "wrong_body"})
    # A field user bound to another body does not even see the lead.
    with pytest.raises(NotFound):
        act(seeded, P("eeb", "field", codes=("320001",), bodies=("EEB",)), code, "sign")
    act(seeded, FIELD_A, code, "sign")
    # Assigned scope: only the signer may start.
    with pytest.raises(Forbidden, match="assigned to 'fa'"):
        act(seeded, FIELD_A2, code, "start")
    with pytest.raises(Forbidden, match="needs one of the roles"):
        act(seeded, INSPECTOR, code, "start")
    act(seeded, FIELD_A, code, "start")
    with pytest.raises(Invalid, match="'photo_refs' is required"):
        act(seeded, FIELD_A, code, "rectify", {"evidence_note": "x", "gps_lon": 1, "gps_lat": 2})


def test_dispatch_to_unknown_body_is_refused(seeded: Db) -> None:
    code = intake(seeded, "far", lon=118.5, lat=35.5)  # outside: stays received for a dispatcher
    assert set(running(seeded, code)) == {"accept"}
    with pytest.raises(Invalid, match="active body code"):
        act(seeded, DISPATCHER, code, "dispatch", {"body": "NOPE"})
    out = act(seeded, DISPATCHER, code, "dispatch", {"body": "EEB"})
    assert out.state_after == "dispatched" and set(running(seeded, code)) == {"sign", "conclude"}


# --------------------------------------------------------------------------------- deadlines


def test_deadlines_at_intake_across_national_day(seeded: Db) -> None:
    # 2025-09-30 (Tue) is the last working day before the 1–8 October holiday; 11 October
    # (Sat) is a swapped working day. sign: 1 working day → 9 Oct. conclude (12345 complaint,
    # 13 working days): 9,10,11(Sat),13,14,15,16,17,20,21,22,23,24 → 24 Oct 17:30.
    at = datetime(2025, 9, 30, 10, 0, tzinfo=SH)
    code = intake(seeded, "natday", at=at)
    run = running(seeded, code)
    assert run["sign"].due_at == datetime(2025, 10, 9, 17, 30, tzinfo=SH)
    assert run["conclude"].due_at == datetime(2025, 10, 24, 17, 30, tzinfo=SH)
    assert run["conclude"].rule_id == "12345-complaint" and not run["conclude"].provisional
    with seeded.uow() as s:
        lead = s.scalar(select(Lead).where(Lead.code == code))
        assert lead.due_at == datetime(2025, 10, 24, 17, 30, tzinfo=SH)


NOTICE_2027 = """# test notice (dates invented for the test)
# year: 2027
date,kind,name
2027-01-01,holiday,元旦
2027-02-15,holiday,春节
2027-02-16,holiday,春节
2027-02-17,holiday,春节
2027-02-18,holiday,春节
2027-02-19,holiday,春节
2027-02-20,workday,春节
"""


def test_2027_deadline_is_provisional_then_recomputed_after_import(seeded: Db) -> None:
    # 信访: 60 calendar days from 20 Dec 2026 is 18 Feb 2027, a year the package does not know.
    code = intake(seeded, "xf", at=datetime(2026, 12, 20, 10, 0, tzinfo=SH), channel="xinfang")
    conc = running(seeded, code)["conclude"]
    assert conc.due_at == datetime(2027, 2, 18, 17, 30, tzinfo=SH) and conc.provisional
    records = parse_holiday_notice(NOTICE_2027)
    with seeded.uow() as s:
        res = wf.import_calendar(s, records, actor="root", now=NOW, source="test")
    assert res.year == 2027 and res.recomputed >= 1 and res.still_provisional == 0
    conc = running(seeded, code)["conclude"]
    # 18 Feb is now a holiday day; the period rolls to the next working day, Sat 20 Feb (调休).
    assert conc.due_at == datetime(2027, 2, 20, 17, 30, tzinfo=SH) and not conc.provisional
    with seeded.uow() as s:
        assert s.scalar(select(Lead.due_at).where(Lead.code == code)) == conc.due_at
        assert [d["date"] for d in wf.calendar_days(s, 2027)][:2] == ["2027-01-01", "2027-02-15"]


# -------------------------------------------------------------------------------- escalation


def _notices(db: Db) -> list[tuple[str, str | None]]:
    with db.uow() as s:
        return [(n.kind, n.level) for n in s.scalars(select(WfNotice).order_by(WfNotice.id))]


def test_escalation_timing_with_injected_clock_and_idempotence(seeded: Db) -> None:
    # Received Mon 1 June 2026 10:00 (02:00 UTC); sign due Tue 2 June 17:30 (09:30 UTC); 80 %
    # of those 31.5 h have passed at 03:12 UTC on 2 June.
    code = intake(seeded, "esc")

    def run(at: datetime) -> wf.EscalationReport:
        with seeded.uow() as s:
            return wf.escalate(s, at)

    assert run(datetime(2026, 6, 2, 3, 0, tzinfo=UTC)) == wf.EscalationReport()
    assert run(datetime(2026, 6, 2, 3, 13, tzinfo=UTC)) == wf.EscalationReport(yellow=1)
    assert run(datetime(2026, 6, 2, 9, 30, tzinfo=UTC)) == wf.EscalationReport()  # on time
    assert run(datetime(2026, 6, 2, 9, 31, tzinfo=UTC)) == wf.EscalationReport(red=1, urged=1)
    # Supervision 2 working days after the due time: Thu 4 June 17:30.
    assert run(datetime(2026, 6, 4, 9, 30, tzinfo=UTC)) == wf.EscalationReport()
    assert run(datetime(2026, 6, 4, 9, 31, tzinfo=UTC)) == wf.EscalationReport(supervised=1)
    assert run(datetime(2026, 6, 4, 9, 32, tzinfo=UTC)) == wf.EscalationReport()
    assert _notices(seeded) == [("warning", "yellow"), ("warning", "red"), ("urge", None),
                                ("supervise", None)]
    with seeded.uow() as s:
        lead_id = s.scalar(select(Lead.id).where(Lead.code == code))
        case = s.get(WfCase, lead_id)
        assert case.urged and case.supervised
        assert s.scalar(select(func.count()).select_from(AuditEvent)
                        .where(AuditEvent.action.in_(["lead.urge", "lead.supervise"]))) == 2
        assert audit.verify(s).ok


def test_concurrent_escalation_passes_write_each_notice_once(seeded: Db) -> None:
    for i in range(5):
        intake(seeded, f"cc{i}")
    at = datetime(2026, 6, 10, 9, 0, tzinfo=UTC)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def one() -> None:
        try:
            barrier.wait()
            with seeded.uow() as s:
                wf.escalate(s, at)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    kinds = _notices(seeded)
    # Per lead: sign clock red + urged + supervised (3 working days overdue); conclude not due.
    assert sorted(kinds).count(("urge", None)) == 5
    assert sorted(kinds).count(("supervise", None)) == 5
    assert sorted(kinds).count(("warning", "red")) == 5
    with seeded.uow() as s:
        assert wf.escalate(s, at) == wf.EscalationReport()
        assert audit.verify(s).ok


# ------------------------------------------------------------------------- optimistic locking


def test_concurrent_transition_gets_conflict_with_current_state(seeded: Db) -> None:
    code = intake(seeded, "lock")
    with seeded.uow() as stale:
        lead = stale.scalar(select(Lead).where(Lead.code == code))  # read version 1
        assert lead.row_version == 1
        act(seeded, FIELD_A, code, "sign")  # someone else wins meanwhile
        with pytest.raises(Conflict, match="changed by someone else") as exc:
            wf.transition(stale, FIELD_A, code, "return", {"reason": "wrong_body"}, NOW)
        assert exc.value.detail == {"state": "signed", "version": 2}
    with pytest.raises(Conflict, match="version 2"):
        act(seeded, FIELD_A, code, "start", expected_version=1)
    with seeded.uow() as s:
        assert s.scalar(select(Lead.status).where(Lead.code == code)) == "signed"
        assert audit.verify(s).ok


# ------------------------------------------------------------------------------- tamper check


def test_audit_verify_cli_names_the_altered_event(seeded: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from api.cli import app

    code = intake(seeded, "tamper")
    act(seeded, FIELD_A, code, "sign")
    monkeypatch.setenv("LEADGRID_DATABASE_URL", seeded.url)
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify"])
    assert ok.exit_code == 0, ok.output
    with seeded.uow() as s:
        target = s.scalar(select(AuditEvent).where(AuditEvent.action == "lead.sign"))
        target_id = target.id
        s.execute(update(AuditEvent).where(AuditEvent.id == target_id).values(reason="nothing"))
    bad = runner.invoke(app, ["audit", "verify"])
    assert bad.exit_code == 1
    assert f"id={target_id}" in bad.output


# -------------------------------------------------------------------------------------- KPIs


def test_kpis_on_a_hand_made_history(seeded: Db) -> None:
    """Four leads in county 320001, all with CMB at intake (Mon 1 June 2026 10:00).

    sign due Tue 2 June 17:30; conclude (12345 complaint, 13 wd) due Thu 18 June 17:30.

    * A: signed +1 h, full loop, closed 3 June, satisfied.
    * B: signed Wed 3 June (late), rework once, closed 5 June, dissatisfied.
    * C: returned by CMB on 1 June, re-dispatched to EEB, signed by EEB; still open.
    * D: signed +1 h, extension of 3 days approved; still open.

    As of 20 June 2026 (after the conclude due dates of C and D):
    signed_in_time = (A, D, C's EEB signature is its first signature → on time? C's *first* sign
    clock was CMB's, due 2 June; C signed 1 June 12:00 as EEB → on time) → A, C, D on time, B
    late: 3 / 4 = 0.75.
    closed_on_time: A and B closed on time (3 and 5 June ≤ 18 June); C open and overdue (18
    June); D open, extended by 3 working days (19 June is the Dragon Boat holiday: 22, 23, 24)
    → 24 June, not overdue → 2 / 3 = 0.6667.
    closure 2 / 4 = 0.5. rework: B failed once, A and B verified → 1 / 2 = 0.5.
    return: 1 return / 5 dispatches (A, B, C, D at intake + C re-dispatch) = 0.2.
    extension: D / 4 dispatched = 0.25. satisfaction: 1 satisfied of 2 answers = 0.5.
    """
    t0 = NOW
    h = timedelta(hours=1)
    a, b, c, d = (intake(seeded, f"k{x}") for x in "abcd")
    eeb = P("eebf", "field", codes=("320001",), bodies=("EEB",))

    def loop(code: str, start: datetime, fail: bool, sat: str) -> None:
        t = start
        for who, action, payload in [
            (FIELD_A, "start", {}), (FIELD_A, "rectify", RECTIFY),
            *([(DISPATCHER, "verify_fail", {"reason": "again"}), (FIELD_A, "rectify", RECTIFY)]
              if fail else []),
            (DISPATCHER, "verify_pass", {}), (DISPATCHER, "feedback", {"feedback_note": "ok"}),
            (DISPATCHER, "return_visit", {"satisfaction": sat}), (DISPATCHER, "close", {}),
        ]:
            t += h
            act(seeded, who, code, action, payload, at=t)

    act(seeded, FIELD_A, a, "sign", at=t0 + h)
    loop(a, datetime(2026, 6, 3, 1, 0, tzinfo=UTC), False, "satisfied")
    act(seeded, FIELD_A, b, "sign", at=datetime(2026, 6, 3, 1, 0, tzinfo=UTC))
    loop(b, datetime(2026, 6, 5, 1, 0, tzinfo=UTC), True, "dissatisfied")
    act(seeded, FIELD_A, c, "return", {"reason": "wrong_body"}, at=t0 + h)
    act(seeded, DISPATCHER, c, "dispatch", {"body": "EEB"}, at=t0 + 2 * h)
    act(seeded, eeb, c, "sign", at=t0 + 2 * h)
    act(seeded, FIELD_A, d, "sign", at=t0 + h)
    act(seeded, FIELD_A, d, "extension_request", {"reason": "parts", "days": 3}, at=t0 + 2 * h)
    act(seeded, LEADER, d, "extension_approve", {}, at=t0 + 3 * h)
    assert running(seeded, d)["conclude"].due_at == datetime(2026, 6, 24, 17, 30, tzinfo=SH)

    as_of = datetime(2026, 6, 20, 0, 0, tzinfo=UTC)
    with seeded.uow() as s:
        res = wf.kpis(s, INSPECTOR, by="county", now=as_of)
        by_body = {g["group"]: g for g in wf.kpis(s, INSPECTOR, by="body", now=as_of)["groups"]}
        scoped = wf.kpis(s, P("i2", "inspector", codes=("320002",)), by="county", now=as_of)
        hours = wf.node_hours(s, INSPECTOR, by="county")
    (g,) = res["groups"]
    assert g["group"] == "320001" and g["cases"] == 4
    assert g["signed_in_time"] == 0.75
    assert g["closed_on_time"] == round(2 / 3, 4)
    assert g["closure"] == 0.5 and g["rework"] == 0.5 and g["return"] == 0.2
    assert g["extension"] == 0.25 and g["satisfaction"] == 0.5
    # By body the return is CMB's (4 dispatches to CMB, 1 returned); EEB got 1, returned none.
    assert by_body["CMB"]["return"] == 0.25 and by_body["EEB"]["return"] == 0.0
    assert by_body["EEB"]["rank"]["return"] == 1
    assert scoped["groups"] == []  # nothing in the other county
    sign = next(x for x in hours if x["node"] == "sign")
    # Sign durations: A 1 h, B 47 h (1 June 02:00 → 3 June 01:00), C (CMB) 1 h → returned,
    # C (EEB) 0 h, D 1 h: 50 h / 5 clocks.
    assert sign["n"] == 5 and sign["mean_hours"] == 10.0


def test_oversight_queries(seeded: Db) -> None:
    a, b, c = (intake(seeded, f"o{x}") for x in "abc")
    t = NOW
    # a: returned twice (bounced between bodies).
    act(seeded, FIELD_A, a, "return", {"reason": "wrong_body"}, at=t)
    act(seeded, DISPATCHER, a, "dispatch", {"body": "EEB"}, at=t)
    act(seeded, P("e", "field", bodies=("EEB",)), a, "return", {"reason": "wrong_body"}, at=t)
    act(seeded, DISPATCHER, a, "dispatch", {"body": "CMB"}, at=t)
    # b: closed in 40 minutes, then reopened (a rebound).
    for who, action, payload in PATHS["closed"]:
        t += timedelta(minutes=5)
        act(seeded, who, b, action, payload, at=t)
    act(seeded, LEADER, b, "reopen", {"reason": "smoke again"}, at=t + timedelta(days=1))
    as_of = datetime(2026, 6, 10, tzinfo=UTC)
    with seeded.uow() as s:
        ret = wf.oversight(s, INSPECTOR, "returned", now=as_of)
        fast = wf.oversight(s, INSPECTOR, "closed_too_fast", now=as_of)
        reb = wf.oversight(s, INSPECTOR, "rebounds", now=as_of)
        over = wf.oversight(s, INSPECTOR, "overdue", now=as_of)
        other = wf.oversight(s, P("i2", "inspector", codes=("320002",)), "overdue", now=as_of)
        with pytest.raises(Invalid, match="one of"):
            wf.oversight(s, INSPECTOR, "gossip", now=as_of)
    assert [i["code"] for i in ret["items"]] == [a] and ret["items"][0]["return_count"] == 2
    assert fast["total"] == 0  # b was reopened: no longer closed
    assert [i["code"] for i in reb["items"]] == [b]
    # As of 10 June: a's sign (re-dispatched 1 June, due 2 June) and c's sign are late; b's
    # handle clock, restarted on 2 June, runs 10 working days to 16 June.
    assert over["total"] == 2 and over["by_county"] == {"320001": 2}
    assert other["total"] == 0
    with seeded.uow() as s:
        s.execute(update(Lead.__table__).where(Lead.__table__.c.code == c)
                  .values(status="closed", closed_at=NOW + timedelta(minutes=30)))
        assert [i["code"] for i in wf.oversight(s, INSPECTOR, "closed_too_fast", now=as_of)
                ["items"]] == [c]
    assert State.CLOSED.value == "closed"
