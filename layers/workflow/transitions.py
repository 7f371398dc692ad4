"""Transitions of the case workflow as data, and the pure function that applies them.

The table ``data/transitions.csv`` has one row per *way* of performing an action::

    action,from_states,to_state,roles,scope,requires,node

``from_states``, ``roles``, ``requires`` and ``node`` are ``|``-separated; ``to_state`` is ``=``
when the action leaves the state unchanged (extension, urging, supervision). An action may have
several rows (``close`` from ``return_visit`` needs nothing more, ``close`` from ``feedback`` —
no return visit possible — needs a reason); the first row whose states, role and scope fit is used.

:func:`apply` checks, in this order, so the error names the first thing that is wrong: the action
exists; it is allowed from the current state; one of the actor's roles may do it; the actor has
the scope; the payload carries every required field with a valid value (and no unknown field);
then the action's own rules (extension only before the deadline, within the regime's limit, …).
It never reads a clock, a database or a file at call time: the caller passes the case as a
:class:`CaseView`, the actor as an :class:`Actor` and ``now``; it gets back a
:class:`TransitionResult` to persist in one unit of work.

Clock conventions: a state-changing transition stops every running step node and starts the
node(s) in the ``node`` column; ``conclude`` (the case-level clock) starts at the first dispatch,
keeps running through returns and re-dispatches (the complainant's wait does not restart because
the case bounced), and stops when the case is closed or merged. ``reopen`` starts a new one.
Roles ``admin`` and ``system`` pass scope checks (they act city-wide), but only for the actions
whose ``roles`` list them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

from layers.workflow.states import (
    RETURN_REASONS,
    STEP_NODES,
    TERMINAL_STATES,
    Action,
    Node,
    ReturnReason,
    Role,
    Satisfaction,
    Scope,
    State,
)

DEFAULT_TABLE_PATH = Path(__file__).resolve().parents[2] / "data" / "transitions.csv"

#: Marker in ``to_state`` for actions that leave the state as it is.
UNCHANGED = "="

#: Optional payload fields accepted by every action, and per action.
#: ``public_note`` is text approved for publication (Open311 ``status_notes``, public disclosure).
OPTIONAL_FIELDS: frozenset[str] = frozenset({"note", "public_note"})
ACTION_OPTIONAL_FIELDS: dict[str, frozenset[str]] = {
    Action.EXTENSION_REQUEST: frozenset({"node"}),
    Action.EXTENSION_APPROVE: frozenset({"days"}),
    Action.URGE: frozenset({"node"}),
    Action.SUPERVISE: frozenset({"node"}),
    Action.DISPATCH: frozenset({"assignee_id"}),
}

MAX_TEXT_LENGTH = 4000  # Open311 description limit; longer text is almost certainly a paste error


# --------------------------------------------------------------------------------------- errors


class TransitionError(ValueError):
    """A transition was refused; the message says why and what would be allowed."""


class TransitionTableError(ValueError):
    """The transitions table itself is malformed (row and column named)."""


class UnknownActionError(TransitionError):
    """The action is not in the table."""


class StateNotAllowedError(TransitionError):
    """The action cannot be taken from the case's current state."""


class RoleNotAllowedError(TransitionError):
    """None of the actor's roles may take the action."""


class OutOfScopeError(TransitionError):
    """The actor lacks the jurisdiction, body or assignment the action needs."""


class PayloadError(TransitionError):
    """A payload field is missing, unknown or invalid."""

    def __init__(self, message: str, field_name: str) -> None:
        super().__init__(message)
        self.field_name = field_name


class ExtensionError(TransitionError):
    """An extension request/decision breaks the extension rules (deadline passed, limit, …)."""


class NodeError(TransitionError):
    """The node named (or implied) is not running on the case."""


# --------------------------------------------------------------------------------- value types


class ClockOp(StrEnum):
    """What a transition does to a node clock."""

    START = "start"
    STOP = "stop"
    EXTEND = "extend"
    URGE = "urge"
    SUPERVISE = "supervise"


@dataclass(frozen=True)
class NodeClock:
    """A running node clock as the caller has it stored."""

    node: Node
    started_at: datetime
    due_at: datetime | None = None
    urged: bool = False
    supervised: bool = False
    provisional: bool = False


@dataclass(frozen=True)
class ExtensionLimit:
    """The most a regime allows: ``max_count`` extensions totalling at most ``max_days``."""

    max_count: int
    max_days: int


@dataclass(frozen=True)
class PendingExtension:
    """An extension requested and not yet decided."""

    node: Node
    days: int
    requested_at: datetime


@dataclass(frozen=True)
class Actor:
    """Who acts: user id, roles, and the jurisdiction codes and bodies they are bound to."""

    user_id: str
    roles: frozenset[Role]
    jurisdictions: frozenset[str] = frozenset()
    bodies: frozenset[str] = frozenset()


@dataclass(frozen=True)
class CaseView:
    """What :func:`apply` needs to know about a case.

    ``clocks`` are the running node clocks (at most one step node plus ``conclude``).
    ``extension_limit`` is resolved by the caller from the deadline rules of the case's regime
    (:func:`layers.workflow.deadlines.DeadlineRules.extension_limit`); ``None`` means unlimited.
    """

    id: str
    state: State
    city_code: str | None = None
    county_code: str | None = None
    township_code: str | None = None
    body: str | None = None
    assignee_id: str | None = None
    clocks: tuple[NodeClock, ...] = ()
    pending_extension: PendingExtension | None = None
    extensions_used: int = 0
    extension_days_used: int = 0
    extension_limit: ExtensionLimit | None = None
    parent_id: str | None = None
    version: int = 0

    @property
    def jurisdiction_codes(self) -> frozenset[str]:
        """The case's city, county and township codes (those that are set)."""
        return frozenset(
            c for c in (self.city_code, self.county_code, self.township_code) if c
        )

    def clock(self, node: Node) -> NodeClock | None:
        """The running clock of ``node``, if any."""
        return next((c for c in self.clocks if c.node == node), None)

    @property
    def step_clock(self) -> NodeClock | None:
        """The running step node (anything but ``conclude``), if any."""
        return next((c for c in self.clocks if c.node in STEP_NODES), None)


@dataclass(frozen=True)
class ClockEffect:
    """One change to a node clock; the caller computes due times for ``start`` effects."""

    op: ClockOp
    node: Node
    at: datetime
    days: int | None = None


@dataclass(frozen=True)
class TransitionResult:
    """Everything a transition changes; persist it in one unit of work.

    ``changes`` holds the case fields to update (always ``state`` and ``version``; plus e.g.
    ``body``, ``assignee_id``, ``parent_id``, ``pending_extension``, ``satisfaction``).
    ``expected_version`` is the version the update must find (optimistic locking).
    """

    case_id: str
    action: Action
    role: Role
    state_before: State
    state_after: State
    expected_version: int
    changes: Mapping[str, Any]
    clocks: tuple[ClockEffect, ...]
    events: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class TransitionRule:
    """One row of the transitions table."""

    action: Action
    from_states: frozenset[State]
    to_state: State | None  # None: unchanged
    roles: tuple[Role, ...]
    scope: Scope
    requires: tuple[str, ...]
    nodes: tuple[Node, ...]
    line: int = 0


@dataclass(frozen=True)
class TransitionTable:
    """The transitions table, indexed by action."""

    rules: tuple[TransitionRule, ...]
    _by_action: Mapping[Action, tuple[TransitionRule, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        index: dict[Action, list[TransitionRule]] = {}
        for r in self.rules:
            index.setdefault(r.action, []).append(r)
        object.__setattr__(self, "_by_action", {a: tuple(rs) for a, rs in index.items()})

    @property
    def actions(self) -> tuple[Action, ...]:
        """Actions present in the table, in table order."""
        return tuple(self._by_action)

    def rules_for(self, action: Action) -> tuple[TransitionRule, ...]:
        """Rows for ``action`` (empty when absent)."""
        return self._by_action.get(action, ())

    def allowed_actions(self, case: CaseView, actor: Actor) -> list[Action]:
        """Actions this actor could attempt on this case (state, role and scope fit).

        Payload and clock rules are not checked: this is for offering buttons, not for deciding.
        """
        out = []
        for action, rows in self._by_action.items():
            for r in rows:
                role = _pick_role(r, actor)
                if (
                    case.state in r.from_states
                    and role is not None
                    and _scope_problem(r.scope, case, actor, role) is None
                ):
                    out.append(action)
                    break
        return out


# ------------------------------------------------------------------------------- table loading


def _split(cell: str | None) -> list[str]:
    return [p.strip() for p in (cell or "").split("|") if p.strip()]


def _enum_list(enum: type[StrEnum], cell: str | None, line: int, column: str) -> list[Any]:
    out = []
    for part in _split(cell):
        try:
            out.append(enum(part))
        except ValueError:
            raise TransitionTableError(
                f"transitions table line {line}, column {column!r}: {part!r} is not one of "
                f"{[e.value for e in enum]}"
            ) from None
    return out


def parse_table(rows: Iterable[Mapping[str, str]]) -> TransitionTable:
    """Build a :class:`TransitionTable` from dict rows (CSV or database).

    Parameters
    ----------
    rows
        Mappings with keys ``action, from_states, to_state, roles, scope, requires, node``.

    Returns
    -------
    TransitionTable

    Raises
    ------
    TransitionTableError
        Naming the line (header is line 1) and column of the first bad cell.
    """
    rules = []
    for i, row in enumerate(rows, start=2):
        (action,) = _enum_list(Action, row.get("action"), i, "action") or [None]
        if action is None:
            raise TransitionTableError(f"transitions table line {i}: 'action' is empty")
        from_states = _enum_list(State, row.get("from_states"), i, "from_states")
        if not from_states:
            raise TransitionTableError(f"transitions table line {i}: 'from_states' is empty")
        to_cell = (row.get("to_state") or "").strip()
        if not to_cell:
            raise TransitionTableError(f"transitions table line {i}: 'to_state' is empty")
        to_state = None if to_cell == UNCHANGED else _enum_list(State, to_cell, i, "to_state")[0]
        roles = _enum_list(Role, row.get("roles"), i, "roles")
        if not roles:
            raise TransitionTableError(f"transitions table line {i}: 'roles' is empty")
        (scope,) = _enum_list(Scope, row.get("scope") or "none", i, "scope")
        nodes = _enum_list(Node, row.get("node"), i, "node")
        requires = _split(row.get("requires"))
        unknown = [f for f in requires if f not in _VALIDATORS]
        if unknown:
            raise TransitionTableError(
                f"transitions table line {i}, column 'requires': unknown field(s) {unknown}; "
                f"known fields are {sorted(_VALIDATORS)}"
            )
        rules.append(
            TransitionRule(
                action=action,
                from_states=frozenset(from_states),
                to_state=to_state,
                roles=tuple(roles),
                scope=scope,
                requires=tuple(requires),
                nodes=tuple(nodes),
                line=i,
            )
        )
    return TransitionTable(tuple(rules))


def load_table(path: Path | str = DEFAULT_TABLE_PATH) -> TransitionTable:
    """Read the transitions table from a CSV file (default ``data/transitions.csv``)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return parse_table(csv.DictReader(fh))


@lru_cache(maxsize=1)
def default_table() -> TransitionTable:
    """The project's transitions table, read once."""
    return load_table(DEFAULT_TABLE_PATH)


# ------------------------------------------------------------------------------ payload checks


def _text(name: str, value: Any, action: Action) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(
            f"payload field {name!r} must be a non-empty string, got {value!r}", name
        )
    if len(value) > MAX_TEXT_LENGTH:
        raise PayloadError(
            f"payload field {name!r} is {len(value)} characters; at most {MAX_TEXT_LENGTH}", name
        )
    return value.strip()


def _reason(name: str, value: Any, action: Action) -> str:
    if action == Action.RETURN:
        try:
            return ReturnReason(value).value
        except ValueError:
            allowed = ", ".join(f"{r.value} ({label})" for r, label in RETURN_REASONS.items())
            raise PayloadError(
                f"payload field 'reason' for a return must be one of the fixed reasons "
                f"[{allowed}], got {value!r}",
                name,
            ) from None
    return _text(name, value, action)


def _photo_refs(name: str, value: Any, action: Action) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise PayloadError(
            f"payload field {name!r} must be a non-empty list of photo references, got {value!r}",
            name,
        )
    bad = [v for v in value if not isinstance(v, str) or not v.strip()]
    if bad:
        raise PayloadError(
            f"payload field {name!r} holds invalid references {bad!r}; each must be a "
            "non-empty string",
            name,
        )
    return [v.strip() for v in value]


def _coordinate(bound: float) -> Any:
    def check(name: str, value: Any, action: Action) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PayloadError(f"payload field {name!r} must be a number, got {value!r}", name)
        v = float(value)
        if not math.isfinite(v) or not -bound <= v <= bound:
            raise PayloadError(
                f"payload field {name!r} = {value!r} is outside [-{bound:g}, {bound:g}]", name
            )
        return v

    return check


def _positive_int(name: str, value: Any, action: Action) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PayloadError(
            f"payload field {name!r} must be a positive whole number, got {value!r}", name
        )
    return value


def _satisfaction(name: str, value: Any, action: Action) -> str:
    try:
        return Satisfaction(value).value
    except ValueError:
        raise PayloadError(
            f"payload field 'satisfaction' must be one of {[s.value for s in Satisfaction]}, "
            f"got {value!r}",
            name,
        ) from None


def _node(name: str, value: Any, action: Action) -> Node:
    try:
        return Node(value)
    except ValueError:
        raise PayloadError(
            f"payload field 'node' must be one of {[n.value for n in Node]}, got {value!r}", name
        ) from None


def _identifier(name: str, value: Any, action: Action) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value).strip() == "":
        raise PayloadError(f"payload field {name!r} must be an identifier, got {value!r}", name)
    return str(value).strip()


_VALIDATORS: dict[str, Any] = {
    "reason": _reason,
    "note": _text,
    "public_note": _text,
    "body": _identifier,
    "assignee_id": _identifier,
    "evidence_note": _text,
    "photo_refs": _photo_refs,
    "gps_lon": _coordinate(180.0),
    "gps_lat": _coordinate(90.0),
    "feedback_note": _text,
    "satisfaction": _satisfaction,
    "days": _positive_int,
    "parent_id": _identifier,
    "node": _node,
}


def _validate_payload(rule: TransitionRule, payload: Mapping[str, Any]) -> dict[str, Any]:
    allowed = (
        set(rule.requires) | OPTIONAL_FIELDS | ACTION_OPTIONAL_FIELDS.get(rule.action, frozenset())
    )
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise PayloadError(
            f"{rule.action.value}: unknown payload field(s) {unknown}; allowed are "
            f"{sorted(allowed)}",
            unknown[0],
        )
    clean: dict[str, Any] = {}
    for name in rule.requires:
        if name not in payload or payload[name] is None:
            raise PayloadError(
                f"{rule.action.value}: payload field {name!r} is required (required fields: "
                f"{list(rule.requires)})",
                name,
            )
    for name, value in payload.items():
        if value is None:
            continue
        clean[name] = _VALIDATORS[name](name, value, rule.action)
    return clean


# ------------------------------------------------------------------------------ role and scope


def _pick_role(rule: TransitionRule, actor: Actor) -> Role | None:
    # The table's order decides which role is recorded when the actor holds several.
    return next((r for r in rule.roles if r in actor.roles), None)


def _scope_problem(scope: Scope, case: CaseView, actor: Actor, role: Role) -> str | None:
    if scope == Scope.NONE or role in (Role.ADMIN, Role.SYSTEM):
        return None
    in_jurisdiction = bool(actor.jurisdictions & case.jurisdiction_codes)
    if scope == Scope.JURISDICTION:
        if in_jurisdiction:
            return None
        return (
            f"the case lies in {sorted(case.jurisdiction_codes)} and the actor's jurisdictions "
            f"are {sorted(actor.jurisdictions)}"
        )
    if scope == Scope.ASSIGNED and case.assignee_id is not None:
        if case.assignee_id == actor.user_id:
            return None
        return f"the case is assigned to {case.assignee_id!r}, not to {actor.user_id!r}"
    # BODY, or ASSIGNED while nobody is assigned yet.
    if case.body is None or case.body not in actor.bodies:
        return f"the case's body is {case.body!r} and the actor's bodies are {sorted(actor.bodies)}"
    if actor.jurisdictions and not in_jurisdiction:
        return (
            f"the actor's body matches but the case lies in {sorted(case.jurisdiction_codes)}, "
            f"outside the actor's jurisdictions {sorted(actor.jurisdictions)}"
        )
    return None


def _select_rule(
    table: TransitionTable, case: CaseView, action: Action, actor: Actor
) -> tuple[TransitionRule, Role]:
    rows = table.rules_for(action)
    in_state = [r for r in rows if case.state in r.from_states]
    if not in_state:
        allowed = sorted({s.value for r in rows for s in r.from_states})
        raise StateNotAllowedError(
            f"action {action.value!r} is not allowed from state {case.state.value!r}; "
            f"it is allowed from {allowed}"
        )
    with_role = [(r, role) for r in in_state if (role := _pick_role(r, actor)) is not None]
    if not with_role:
        allowed_roles = sorted({x.value for r in in_state for x in r.roles})
        raise RoleNotAllowedError(
            f"action {action.value!r} from state {case.state.value!r} needs one of the roles "
            f"{allowed_roles}; actor {actor.user_id!r} has {sorted(x.value for x in actor.roles)}"
        )
    problems = []
    for r, role in with_role:
        problem = _scope_problem(r.scope, case, actor, role)
        if problem is None:
            return r, role
        problems.append(f"{r.scope.value} scope: {problem}")
    raise OutOfScopeError(
        f"action {action.value!r} on case {case.id!r} is out of scope for actor "
        f"{actor.user_id!r}: " + "; ".join(problems)
    )


# ------------------------------------------------------------------------------------- apply


def _as_utc(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise TransitionError(f"'now' must be a timezone-aware datetime, got {now!r}")
    return now.astimezone(UTC)


def _target_clock(case: CaseView, node: Node | None, action: Action) -> NodeClock:
    if node is not None:
        clock = case.clock(node)
        if clock is None:
            running = [c.node.value for c in case.clocks]
            raise NodeError(
                f"{action.value}: node {node.value!r} is not running on case {case.id!r}; "
                f"running nodes are {running}"
            )
        return clock
    # Extensions are about the case's conclusion date when it has one; urging is about the step
    # somebody is late on now.
    order = (
        (case.clock(Node.CONCLUDE), case.step_clock)
        if action == Action.EXTENSION_REQUEST
        else (case.step_clock, case.clock(Node.CONCLUDE))
    )
    clock = next((c for c in order if c is not None), None)
    if clock is None:
        raise NodeError(f"{action.value}: case {case.id!r} has no running node clock")
    return clock


def _extension_effects(
    case: CaseView, rule: TransitionRule, payload: dict[str, Any], now: datetime
) -> tuple[dict[str, Any], list[ClockEffect]]:
    action = rule.action
    if action == Action.EXTENSION_REQUEST:
        if case.pending_extension is not None:
            raise ExtensionError(
                f"case {case.id!r} already has an extension request pending "
                f"({case.pending_extension.days} days on {case.pending_extension.node.value!r}); "
                "it must be approved or refused first"
            )
        clock = _target_clock(case, payload.get("node"), action)
        if clock.due_at is None:
            raise ExtensionError(f"node {clock.node.value!r} has no due time to extend")
        if now >= clock.due_at:
            raise ExtensionError(
                f"an extension must be requested before the deadline: node "
                f"{clock.node.value!r} was due at {clock.due_at.isoformat()}, now is "
                f"{now.isoformat()}"
            )
        _check_limit(case, payload["days"])
        request = PendingExtension(node=clock.node, days=payload["days"], requested_at=now)
        return {"pending_extension": request}, []
    pending = case.pending_extension
    if pending is None:
        raise ExtensionError(f"{action.value}: case {case.id!r} has no pending extension request")
    if action == Action.EXTENSION_REFUSE:
        return {"pending_extension": None}, []
    days = payload.get("days", pending.days)
    if days > pending.days:
        raise PayloadError(
            f"payload field 'days' = {days} exceeds the {pending.days} days requested", "days"
        )
    _check_limit(case, days)
    if case.clock(pending.node) is None:
        raise NodeError(
            f"{action.value}: node {pending.node.value!r} of the pending request is no longer "
            "running"
        )
    changes = {
        "pending_extension": None,
        "extensions_used": case.extensions_used + 1,
        "extension_days_used": case.extension_days_used + days,
    }
    return changes, [ClockEffect(ClockOp.EXTEND, pending.node, now, days)]


def _check_limit(case: CaseView, days: int) -> None:
    limit = case.extension_limit
    if limit is None:
        return
    if case.extensions_used >= limit.max_count:
        raise ExtensionError(
            f"case {case.id!r} has used {case.extensions_used} of {limit.max_count} allowed "
            "extension(s)"
        )
    if case.extension_days_used + days > limit.max_days:
        raise ExtensionError(
            f"extension of {days} days would total {case.extension_days_used + days} days; "
            f"the regime allows at most {limit.max_days}"
        )


def _flag_effects(
    case: CaseView, rule: TransitionRule, payload: dict[str, Any], now: datetime
) -> list[ClockEffect]:
    clock = _target_clock(case, payload.get("node"), rule.action)
    op = ClockOp.URGE if rule.action == Action.URGE else ClockOp.SUPERVISE
    return [ClockEffect(op, clock.node, now)]


def _state_clock_effects(
    case: CaseView, rule: TransitionRule, to_state: State, now: datetime
) -> list[ClockEffect]:
    effects = []
    stop_all = to_state in TERMINAL_STATES
    for c in case.clocks:
        if stop_all or c.node in STEP_NODES:
            effects.append(ClockEffect(ClockOp.STOP, c.node, now))
    still_running = {c.node for c in case.clocks} - {e.node for e in effects}
    for n in rule.nodes:
        if n not in still_running:
            effects.append(ClockEffect(ClockOp.START, n, now))
    return effects


def _snapshot(case: CaseView) -> dict[str, Any]:
    return {
        "state": case.state.value,
        "body": case.body,
        "assignee_id": case.assignee_id,
        "parent_id": case.parent_id,
        "version": case.version,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, PendingExtension):
        return {"node": value.node.value, "days": value.days,
                "requested_at": value.requested_at.astimezone(UTC).isoformat()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def apply(
    case: CaseView,
    action: str,
    actor: Actor,
    payload: Mapping[str, Any],
    now: datetime,
    *,
    table: TransitionTable | None = None,
) -> TransitionResult:
    """Apply ``action`` by ``actor`` to ``case`` at ``now`` and describe everything that changes.

    Parameters
    ----------
    case
        The case as currently stored (state, codes, body, running clocks, version…).
    action
        An action name from the table (``dispatch``, ``sign``, ``return``, …).
    actor
        Who acts, with their roles, jurisdictions and bodies.
    payload
        Fields the action requires (``reason``, ``evidence_note``, ``satisfaction``, …) plus
        optional ones (``note``; ``node`` for extension/urge/supervise; ``days`` on approval).
    now
        Timezone-aware time of the action; recorded in UTC.
    table
        Transitions table; defaults to ``data/transitions.csv``.

    Returns
    -------
    TransitionResult
        New state, field changes, clock effects and the audit event(s) to append.

    Raises
    ------
    UnknownActionError, StateNotAllowedError, RoleNotAllowedError, OutOfScopeError,
    PayloadError, ExtensionError, NodeError
        All subclasses of :class:`TransitionError` (a ``ValueError``).
    """
    table = table or default_table()
    now = _as_utc(now)
    try:
        act = Action(action)
    except ValueError:
        act = None
    if act is None or not table.rules_for(act):
        raise UnknownActionError(
            f"unknown action {action!r}; allowed actions are {[a.value for a in table.actions]}"
        )
    rule, role = _select_rule(table, case, act, actor)
    clean = _validate_payload(rule, payload)

    changes: dict[str, Any] = {}
    clocks: list[ClockEffect] = []
    to_state = rule.to_state or case.state
    if act in (Action.EXTENSION_REQUEST, Action.EXTENSION_APPROVE, Action.EXTENSION_REFUSE):
        changes, clocks = _extension_effects(case, rule, clean, now)
    elif act in (Action.URGE, Action.SUPERVISE):
        clocks = _flag_effects(case, rule, clean, now)
    if rule.to_state is not None:
        clocks = _state_clock_effects(case, rule, to_state, now)

    if act in (Action.DISPATCH, Action.REOPEN_REDISPATCH):
        changes["body"] = clean["body"]
        # A new body means a new handler: whoever signs becomes the assignee.
        changes["assignee_id"] = clean.get("assignee_id")
    elif act == Action.SIGN:
        changes["assignee_id"] = actor.user_id
    elif act == Action.RETURN:
        changes["assignee_id"] = None
    elif act == Action.MERGE:
        if clean["parent_id"] == case.id:
            raise PayloadError(
                f"payload field 'parent_id' = {clean['parent_id']!r}: a case cannot be merged "
                "into itself",
                "parent_id",
            )
        changes["parent_id"] = clean["parent_id"]
    elif act == Action.RETURN_VISIT:
        changes["satisfaction"] = clean["satisfaction"]
    if rule.to_state is not None and case.state == State.CLOSED:
        changes["rebound"] = True
    if rule.to_state is not None and case.pending_extension is not None and (
        to_state in TERMINAL_STATES or to_state == State.RETURNED
    ):
        # A request for a clock that no longer runs for this handler lapses.
        changes.setdefault("pending_extension", None)
    changes["state"] = to_state
    changes["version"] = case.version + 1

    before = _snapshot(case)
    after = {**before, **{k: _jsonable(v) for k, v in changes.items() if k in before}}
    after["state"] = to_state.value
    event = {
        "case_id": case.id,
        "action": act.value,
        "actor_id": actor.user_id,
        "role": role.value,
        "at": now,
        "reason": clean.get("reason"),
        "before": before,
        "after": after,
        "payload": {k: _jsonable(v) for k, v in clean.items()},
        "clocks": [
            {"op": e.op.value, "node": e.node.value, "days": e.days} for e in clocks
        ],
    }
    return TransitionResult(
        case_id=case.id,
        action=act,
        role=role,
        state_before=case.state,
        state_after=to_state,
        expected_version=case.version,
        changes=changes,
        clocks=tuple(clocks),
        events=(event,),
    )


def open_case(case_id: str, actor: Actor, now: datetime) -> TransitionResult:
    """The result of creating a case in ``received``: the ``accept`` clock starts.

    Parameters
    ----------
    case_id
        Id of the new case.
    actor
        Who registered it (a dispatcher, the public intake, or ``system`` for alarms).
    now
        Timezone-aware intake time.

    Returns
    -------
    TransitionResult
        ``state_before`` and ``state_after`` are both ``received``; the event's ``before`` is
        ``None``.
    """
    now = _as_utc(now)
    role = sorted(actor.roles)[0] if actor.roles else Role.SYSTEM
    clocks = (ClockEffect(ClockOp.START, Node.ACCEPT, now),)
    event = {
        "case_id": case_id,
        "action": Action.RECEIVE.value,
        "actor_id": actor.user_id,
        "role": role.value,
        "at": now,
        "reason": None,
        "before": None,
        "after": {"state": State.RECEIVED.value, "body": None, "assignee_id": None,
                  "parent_id": None, "version": 0},
        "payload": {},
        "clocks": [{"op": "start", "node": Node.ACCEPT.value, "days": None}],
    }
    return TransitionResult(
        case_id=case_id,
        action=Action.RECEIVE,
        role=role,
        state_before=State.RECEIVED,
        state_after=State.RECEIVED,
        expected_version=-1,
        changes={"state": State.RECEIVED, "version": 0},
        clocks=clocks,
        events=(event,),
    )
