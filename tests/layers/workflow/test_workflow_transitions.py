"""Every transition of data/transitions.csv, allowed and refused (role, scope, state, payload)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from layers.workflow.states import (
    RETURN_REASONS,
    STATE_LABELS,
    Action,
    Node,
    Role,
    State,
)
from layers.workflow.transitions import (
    Actor,
    CaseView,
    ClockOp,
    ExtensionError,
    ExtensionLimit,
    NodeClock,
    NodeError,
    OutOfScopeError,
    PayloadError,
    PendingExtension,
    RoleNotAllowedError,
    StateNotAllowedError,
    TransitionError,
    TransitionTableError,
    UnknownActionError,
    apply,
    default_table,
    open_case,
    parse_table,
)

NOW = datetime(2025, 6, 2, 2, 0, tzinfo=UTC)
TABLE = default_table()
BYPASS = {Role.ADMIN, Role.SYSTEM}

VALID = {
    "reason": "wrong_jurisdiction",
    "body": "sthjj",
    "evidence_note": "已封闭裸土并洒水",
    "photo_refs": ["s3://evidence/1.jpg"],
    "gps_lon": 117.18,
    "gps_lat": 34.26,
    "feedback_note": "已电话反馈",
    "satisfaction": "satisfied",
    "days": 5,
    "parent_id": "c0",
}


def case(state: State, **kw: object) -> CaseView:
    base: dict[str, object] = dict(
        id="c1",
        state=state,
        city_code="320300",
        county_code="320311",
        township_code="320311001",
        body="sthjj",
        assignee_id="f1",
        clocks=(
            NodeClock(Node.HANDLE, NOW - timedelta(days=1), NOW + timedelta(days=5)),
            NodeClock(Node.CONCLUDE, NOW - timedelta(days=2), NOW + timedelta(days=10)),
        ),
        version=3,
    )
    base.update(kw)
    return CaseView(**base)  # type: ignore[arg-type]  # test helper builds kwargs dynamically


def actor(role: Role, user: str = "f1") -> Actor:
    """An actor in scope for the case above, whatever the scope kind."""
    return Actor(user, frozenset({role}), frozenset({"320311"}), frozenset({"sthjj"}))


def stranger(role: Role) -> Actor:
    """Right role, wrong jurisdiction, wrong body, not assigned."""
    return Actor("x9", frozenset({role}), frozenset({"320100"}), frozenset({"zjj"}))


def setup_for(rule_action: Action, state: State) -> tuple[CaseView, dict[str, object]]:
    extra: dict[str, object] = {}
    if rule_action in (Action.EXTENSION_APPROVE, Action.EXTENSION_REFUSE):
        extra["pending_extension"] = PendingExtension(Node.CONCLUDE, 5, NOW)
    c = case(state, **extra)
    return c, {}


ROWS = [pytest.param(r, id=f"{r.action.value}@line{r.line}") for r in TABLE.rules]


@pytest.mark.parametrize("rule", ROWS)
def test_every_row_allowed_for_each_role_and_state(rule) -> None:
    for state in rule.from_states:
        for role in rule.roles:
            c, _ = setup_for(rule.action, state)
            payload = {f: VALID[f] for f in rule.requires}
            res = apply(c, rule.action.value, actor(role), payload, NOW)
            expected = rule.to_state or state
            assert res.state_after == expected
            assert res.state_before == state
            assert res.changes["state"] == expected
            assert res.expected_version == 3 and res.changes["version"] == 4
            (event,) = res.events
            assert event["before"]["state"] == state.value
            assert event["after"]["state"] == expected.value
            assert event["role"] == role.value and event["actor_id"] == "f1"


@pytest.mark.parametrize("action", [a for a in TABLE.actions])
def test_refused_from_other_states_naming_both(action: Action) -> None:
    rows = TABLE.rules_for(action)
    allowed = {s for r in rows for s in r.from_states}
    role = rows[0].roles[0]
    for state in set(State) - allowed:
        with pytest.raises(StateNotAllowedError) as exc:
            apply(case(state), action.value, actor(role), {}, NOW)
        assert f"'{state.value}'" in str(exc.value) and action.value in str(exc.value)


@pytest.mark.parametrize("action", [a for a in TABLE.actions])
def test_refused_for_roles_not_listed(action: Action) -> None:
    for rule in TABLE.rules_for(action):
        state = sorted(rule.from_states)[0]
        listed = {r for row in TABLE.rules_for(action) if state in row.from_states
                  for r in row.roles}
        for role in set(Role) - listed:
            with pytest.raises(RoleNotAllowedError) as exc:
                apply(case(state), action.value, actor(role), {}, NOW)
            assert role.value in str(exc.value)
            assert sorted(listed)[0].value in str(exc.value)


def test_inspector_and_public_change_no_case() -> None:
    for rule in TABLE.rules:
        assert Role.INSPECTOR not in rule.roles
        assert Role.PUBLIC not in rule.roles
        assert Role.GIS not in rule.roles


@pytest.mark.parametrize("rule", ROWS)
def test_refused_out_of_scope(rule) -> None:
    roles = [r for r in rule.roles if r not in BYPASS]
    if not roles:
        pytest.skip("only admin/system, which act city-wide")
    state = sorted(rule.from_states)[0]
    c, _ = setup_for(rule.action, state)
    payload = {f: VALID[f] for f in rule.requires}
    with pytest.raises(OutOfScopeError) as exc:
        apply(c, rule.action.value, stranger(roles[0]), payload, NOW)
    assert "x9" in str(exc.value)


ROWS_WITH_PAYLOAD = [
    pytest.param(r, id=f"{r.action.value}@line{r.line}") for r in TABLE.rules if r.requires
]


@pytest.mark.parametrize("rule", ROWS_WITH_PAYLOAD)
def test_refused_when_a_required_field_is_missing(rule) -> None:
    state = sorted(rule.from_states)[0]
    c, _ = setup_for(rule.action, state)
    for missing in rule.requires:
        payload = {f: VALID[f] for f in rule.requires if f != missing}
        with pytest.raises(PayloadError) as exc:
            apply(c, rule.action.value, actor(rule.roles[0]), payload, NOW)
        assert exc.value.field_name == missing
        assert missing in str(exc.value)


def test_admin_and_system_bypass_scope_but_only_where_listed() -> None:
    res = apply(case(State.RECEIVED, body=None), "dispatch", stranger(Role.SYSTEM),
                {"body": "sthjj"}, NOW)
    assert res.state_after == State.DISPATCHED
    with pytest.raises(RoleNotAllowedError):
        apply(case(State.DISPATCHED), "sign", stranger(Role.ADMIN), {}, NOW)


def test_scope_kinds() -> None:
    # body scope: right body in the wrong county is refused
    county_branch = Actor("f3", frozenset({Role.FIELD}), frozenset({"320312"}),
                          frozenset({"sthjj"}))
    with pytest.raises(OutOfScopeError, match="outside the actor's jurisdictions"):
        apply(case(State.DISPATCHED, assignee_id=None), "sign", county_branch, {}, NOW)
    # a body-wide actor with no jurisdiction binding is accepted
    city_wide = Actor("f5", frozenset({Role.FIELD}), frozenset(), frozenset({"sthjj"}))
    res = apply(case(State.DISPATCHED, assignee_id=None), "sign", city_wide, {}, NOW)
    assert res.changes["assignee_id"] == "f5"
    # assigned scope: a colleague of the same body is refused once someone is assigned
    with pytest.raises(OutOfScopeError, match="assigned to 'f1'"):
        apply(case(State.SIGNED), "start", actor(Role.FIELD, user="f4"), {}, NOW)
    # … but while nobody is assigned, body scope suffices
    res = apply(case(State.SIGNED, assignee_id=None), "start", actor(Role.FIELD, "f4"), {}, NOW)
    assert res.state_after == State.IN_PROGRESS
    # jurisdiction scope via the city code
    city_dispatcher = Actor("d1", frozenset({Role.DISPATCHER}), frozenset({"320300"}))
    res = apply(case(State.RECEIVED), "dispatch", city_dispatcher, {"body": "zjj"}, NOW)
    assert res.changes["body"] == "zjj" and res.changes["assignee_id"] is None


def test_unknown_action_lists_allowed() -> None:
    with pytest.raises(UnknownActionError) as exc:
        apply(case(State.RECEIVED), "teleport", actor(Role.ADMIN), {}, NOW)
    assert "teleport" in str(exc.value) and "dispatch" in str(exc.value)
    # intake is not a table action either
    with pytest.raises(UnknownActionError):
        apply(case(State.RECEIVED), "receive", actor(Role.ADMIN), {}, NOW)


def test_return_reason_must_come_from_the_fixed_list() -> None:
    with pytest.raises(PayloadError) as exc:
        apply(case(State.DISPATCHED), "return", actor(Role.FIELD), {"reason": "too busy"}, NOW)
    assert exc.value.field_name == "reason"
    assert "too busy" in str(exc.value) and RETURN_REASONS[next(iter(RETURN_REASONS))] in str(
        exc.value
    )
    res = apply(case(State.SIGNED), "return", actor(Role.FIELD),
                {"reason": "wrong_body", "note": "属住建局职责"}, NOW)
    assert res.state_after == State.RETURNED and res.changes["assignee_id"] is None
    assert res.events[0]["reason"] == "wrong_body"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("photo_refs", []),
        ("photo_refs", "one.jpg"),
        ("photo_refs", ["ok.jpg", ""]),
        ("gps_lon", 200.0),
        ("gps_lat", float("nan")),
        ("gps_lat", "34.2"),
        ("evidence_note", "   "),
    ],
)
def test_invalid_evidence_is_refused(field: str, value: object) -> None:
    payload = {f: VALID[f] for f in ("evidence_note", "photo_refs", "gps_lon", "gps_lat")}
    payload[field] = value
    with pytest.raises(PayloadError) as exc:
        apply(case(State.IN_PROGRESS), "rectify", actor(Role.FIELD), payload, NOW)
    assert exc.value.field_name == field


def test_other_payload_checks() -> None:
    with pytest.raises(PayloadError, match="unknown payload field"):
        apply(case(State.SIGNED), "start", actor(Role.FIELD), {"reson": "typo"}, NOW)
    with pytest.raises(PayloadError, match="satisfaction"):
        apply(case(State.FEEDBACK), "return_visit", actor(Role.DISPATCHER),
              {"satisfaction": "great"}, NOW)
    with pytest.raises(PayloadError, match="days"):
        apply(case(State.IN_PROGRESS), "extension_request", actor(Role.FIELD),
              {"reason": "等待检测报告", "days": 0}, NOW)
    with pytest.raises(PayloadError, match="itself"):
        apply(case(State.DISPATCHED), "merge", actor(Role.DISPATCHER), {"parent_id": "c1"}, NOW)
    with pytest.raises(TransitionError, match="timezone-aware"):
        apply(case(State.SIGNED), "start", actor(Role.FIELD), {}, datetime(2025, 6, 2))


def test_full_loop_clock_effects() -> None:
    opened = open_case("c1", actor(Role.DISPATCHER), NOW)
    assert opened.state_after == State.RECEIVED and opened.events[0]["before"] is None
    assert [(e.op, e.node) for e in opened.clocks] == [(ClockOp.START, Node.ACCEPT)]

    c = case(State.RECEIVED, body=None, assignee_id=None,
             clocks=(NodeClock(Node.ACCEPT, NOW, NOW + timedelta(days=1)),))
    res = apply(c, "dispatch", actor(Role.DISPATCHER), {"body": "sthjj"}, NOW)
    assert [(e.op, e.node) for e in res.clocks] == [
        (ClockOp.STOP, Node.ACCEPT), (ClockOp.START, Node.SIGN), (ClockOp.START, Node.CONCLUDE)
    ]
    conclude = NodeClock(Node.CONCLUDE, NOW, NOW + timedelta(days=10))
    # a return stops the sign node, restarts accept for the dispatcher, keeps conclude running
    c = case(State.DISPATCHED, clocks=(NodeClock(Node.SIGN, NOW, NOW + timedelta(days=1)),
                                       conclude))
    res = apply(c, "return", actor(Role.FIELD), {"reason": "wrong_body"}, NOW)
    assert [(e.op, e.node) for e in res.clocks] == [
        (ClockOp.STOP, Node.SIGN), (ClockOp.START, Node.ACCEPT)
    ]
    # re-dispatch does not restart conclude (already running)
    c = case(State.RETURNED, clocks=(NodeClock(Node.ACCEPT, NOW, NOW), conclude))
    res = apply(c, "dispatch", actor(Role.DISPATCHER), {"body": "zjj"}, NOW)
    assert [(e.op, e.node) for e in res.clocks] == [
        (ClockOp.STOP, Node.ACCEPT), (ClockOp.START, Node.SIGN)
    ]
    # rework: verify fails, handle restarts
    c = case(State.RECTIFIED, clocks=(NodeClock(Node.VERIFY, NOW, NOW), conclude))
    res = apply(c, "verify_fail", actor(Role.LEADER), {"reason": "扬尘仍未覆盖"}, NOW)
    assert res.state_after == State.IN_PROGRESS
    assert [(e.op, e.node) for e in res.clocks] == [
        (ClockOp.STOP, Node.VERIFY), (ClockOp.START, Node.HANDLE)
    ]
    # close stops everything, conclude included
    c = case(State.RETURN_VISIT, clocks=(conclude,))
    res = apply(c, "close", actor(Role.DISPATCHER), {}, NOW)
    assert [(e.op, e.node) for e in res.clocks] == [(ClockOp.STOP, Node.CONCLUDE)]
    # close straight from feedback needs a reason
    with pytest.raises(PayloadError, match="reason"):
        apply(case(State.FEEDBACK, clocks=()), "close", actor(Role.DISPATCHER), {}, NOW)
    # reopen is a rebound and starts a new conclude clock
    res = apply(case(State.CLOSED, clocks=()), "reopen", actor(Role.LEADER),
                {"reason": "群众反映复发"}, NOW)
    assert res.changes["rebound"] is True and res.state_after == State.IN_PROGRESS
    assert {(e.op, e.node) for e in res.clocks} == {
        (ClockOp.START, Node.HANDLE), (ClockOp.START, Node.CONCLUDE)
    }


def test_rework_only_from_rectified() -> None:
    with pytest.raises(StateNotAllowedError, match=r"'in_progress'.*'rectified'"):
        apply(case(State.IN_PROGRESS), "verify_fail", actor(Role.LEADER), {"reason": "x"}, NOW)


def test_extension_only_before_the_deadline() -> None:
    due = NOW + timedelta(hours=1)
    clocks = (NodeClock(Node.HANDLE, NOW, due), NodeClock(Node.CONCLUDE, NOW, due))
    payload = {"reason": "等待监测报告", "days": 5}
    res = apply(case(State.IN_PROGRESS, clocks=clocks), "extension_request", actor(Role.FIELD),
                payload, NOW)
    assert res.state_after == State.IN_PROGRESS and res.clocks == ()
    assert res.changes["pending_extension"] == PendingExtension(Node.CONCLUDE, 5, NOW)
    with pytest.raises(ExtensionError, match="before the deadline"):
        apply(case(State.IN_PROGRESS, clocks=clocks), "extension_request", actor(Role.FIELD),
              payload, due)
    # a named node must be running
    with pytest.raises(NodeError, match="verify"):
        apply(case(State.IN_PROGRESS, clocks=clocks), "extension_request", actor(Role.FIELD),
              {**payload, "node": "verify"}, NOW)


def test_extension_decisions_and_limits() -> None:
    pending = PendingExtension(Node.CONCLUDE, 5, NOW)
    with pytest.raises(ExtensionError, match="already has an extension request pending"):
        apply(case(State.IN_PROGRESS, pending_extension=pending), "extension_request",
              actor(Role.FIELD), {"reason": "r", "days": 3}, NOW)
    with pytest.raises(ExtensionError, match="no pending"):
        apply(case(State.IN_PROGRESS), "extension_approve", actor(Role.LEADER), {}, NOW)
    res = apply(case(State.IN_PROGRESS, pending_extension=pending), "extension_approve",
                actor(Role.LEADER), {"days": 3}, NOW)
    assert res.clocks[0].op == ClockOp.EXTEND and res.clocks[0].days == 3
    assert res.changes["extensions_used"] == 1 and res.changes["pending_extension"] is None
    with pytest.raises(PayloadError, match="exceeds the 5 days"):
        apply(case(State.IN_PROGRESS, pending_extension=pending), "extension_approve",
              actor(Role.LEADER), {"days": 6}, NOW)
    res = apply(case(State.IN_PROGRESS, pending_extension=pending), "extension_refuse",
                actor(Role.LEADER), {"reason": "理由不充分"}, NOW)
    assert res.clocks == () and res.changes["pending_extension"] is None
    # 信访: one extension of at most 30 days
    limit = ExtensionLimit(max_count=1, max_days=30)
    with pytest.raises(ExtensionError, match="1 of 1"):
        apply(case(State.IN_PROGRESS, extension_limit=limit, extensions_used=1),
              "extension_request", actor(Role.FIELD), {"reason": "r", "days": 10}, NOW)
    with pytest.raises(ExtensionError, match="at most 30"):
        apply(case(State.IN_PROGRESS, extension_limit=limit),
              "extension_request", actor(Role.FIELD), {"reason": "r", "days": 31}, NOW)


def test_urge_and_supervise_target_the_step_node() -> None:
    res = apply(case(State.IN_PROGRESS), "urge", Actor("sys", frozenset({Role.SYSTEM})), {}, NOW)
    assert [(e.op, e.node) for e in res.clocks] == [(ClockOp.URGE, Node.HANDLE)]
    res = apply(case(State.IN_PROGRESS), "supervise", actor(Role.LEADER), {"node": "conclude"},
                NOW)
    assert [(e.op, e.node) for e in res.clocks] == [(ClockOp.SUPERVISE, Node.CONCLUDE)]
    with pytest.raises(NodeError):
        apply(case(State.IN_PROGRESS, clocks=()), "urge", actor(Role.LEADER), {}, NOW)


def test_allowed_actions_offers_buttons() -> None:
    acts = TABLE.allowed_actions(case(State.RECTIFIED), actor(Role.LEADER))
    assert set(acts) == {Action.VERIFY_PASS, Action.VERIFY_FAIL, Action.EXTENSION_APPROVE,
                         Action.EXTENSION_REFUSE, Action.URGE, Action.SUPERVISE}
    assert TABLE.allowed_actions(case(State.RECTIFIED), actor(Role.INSPECTOR)) == []


def test_table_errors_name_line_and_column() -> None:
    good = {"action": "sign", "from_states": "dispatched", "to_state": "signed",
            "roles": "field", "scope": "body", "requires": "", "node": "on_site"}
    assert parse_table([good]).rules[0].scope.value == "body"
    with pytest.raises(TransitionTableError, match=r"line 2, column 'from_states'.*'signd'"):
        parse_table([{**good, "from_states": "signd"}])
    with pytest.raises(TransitionTableError, match="line 2, column 'requires'"):
        parse_table([{**good, "requires": "colour"}])


def test_labels_cover_every_state() -> None:
    assert set(STATE_LABELS) == set(State)
