"""The case workflow persisted: open cases at intake, transitions, escalation, calendar, KPIs.

The rules live in the pure modules (:mod:`~layers.workflow.transitions`,
:mod:`~layers.workflow.deadlines`, :mod:`~layers.workflow.warnings`); this module reads a case
into a :class:`~layers.workflow.transitions.CaseView`, applies the pure function and writes the
result — lead row, workflow rows and audit event — in the caller's unit of work.

Conventions:

* **Scope** is enforced inside the lead query (out of scope → :class:`NotFound`), then again by
  the transition table (role, jurisdiction, body, assignment → :class:`Forbidden`). An empty
  scope dimension of a user means "all of it" (as in :mod:`layers.users`).
* **Optimistic locking**: the lead's ``row_version`` is checked by the UPDATE itself (SQLAlchemy
  ``version_id_col``); a concurrent change raises :class:`Conflict` carrying the current state.
  The lead row is written first, so two transitions on one lead serialise on its row lock before
  either touches the audit chain.
* **Fast track**: a lead of urgency ``urgent`` or ``emergency`` also matches deadline rules of the
  category group ``fast_track`` (Yangzhou's 马上办 regime).
* **Escalation** flags (``yellow_at``, ``red_at``, ``urged_at``, ``supervised_at``) are set by
  conditional UPDATEs (``… AND flag IS NULL``) and notices are inserted with ``ON CONFLICT DO
  NOTHING`` on a unique key, so a second pass — even a concurrent one on PostGIS — is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from importlib.metadata import version as _pkg_version
from typing import Any
from typing import cast as tcast

from sqlalchemy import (
    ColumnElement,
    Float,
    Table,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from layers import audit
from layers.db import bulk_insert
from layers.errors import Conflict, Forbidden, Invalid, NotFound
from layers.models import Body, Category, Dispatch, Lead
from layers.shapes import point_ewkt
from layers.users import Principal, lead_scope_clause, scope_clause
from layers.workflow import duplicates
from layers.workflow import transitions as tr
from layers.workflow.calendar import CalendarRecord, DayKind, WorkCalendar, chinesecalendar_records
from layers.workflow.deadlines import (
    Deadline,
    DeadlineRules,
    NoApplicableRuleError,
    Unit,
    apply_extension,
    default_rules,
    recompute,
)
from layers.workflow.kpi import KPI_NAMES, LOWER_IS_BETTER
from layers.workflow.states import (
    OPEN_STATES,
    SATISFIED_ANSWERS,
    Action,
    Node,
    Role,
    Satisfaction,
    State,
)
from layers.workflow.store import (
    KPI_COUNTERS,
    OVERSIGHT_PREDICATES,
    WfCalendarDay,
    WfCase,
    WfClock,
    WfEvidence,
    WfExtension,
    WfKpiDaily,
    WfNodeOtherBodyDaily,
    WfNotice,
)
from layers.workflow.warnings import Escalation, escalation_step

# Core views of the ORM tables, for bulk statements that must not touch ORM state or versions.
LEADS_T = tcast(Table, Lead.__table__)
CASES_T = tcast(Table, WfCase.__table__)
NOTICES_T = tcast(Table, WfNotice.__table__)

FAST_TRACK_URGENCIES = frozenset({"urgent", "emergency"})
CHUNK = 2000


@dataclass(frozen=True)
class Policy:
    """Configurable thresholds of warnings, escalation and oversight."""

    yellow_share: float = 0.8
    urge_after_wd: int = 0
    supervise_after_wd: int = 2
    too_fast_hours: float = 2.0


DEFAULT_POLICY = Policy()


# ------------------------------------------------------------------------------------ calendar


def load_calendar(session: Session) -> WorkCalendar:
    """The working-day calendar stored in the database.

    An empty table (a fresh or truncated database) is seeded from the ``chinesecalendar``
    package first, so deadlines never silently fall back to plain weekends for known years.

    Parameters
    ----------
    session
        Open unit of work.

    Returns
    -------
    WorkCalendar
    """
    # Intake calls this for every batch; the table changes only on a calendar import, which adds
    # rows with new ids, so (count, max id) tells whether the cached calendar is still current.
    count, top = session.execute(select(func.count(WfCalendarDay.id), func.max(WfCalendarDay.id))).one()
    key = str(session.get_bind().engine.url)
    hit = _CALENDARS.get(key)
    if hit is not None and hit[0] == (count, top):
        return hit[1]
    rows = session.execute(
        select(WfCalendarDay.year, WfCalendarDay.day, WfCalendarDay.kind, WfCalendarDay.name)
    ).all()
    if not rows:
        seed_calendar(session)
        return load_calendar(session)
    cal = WorkCalendar.from_records(
        CalendarRecord(r.year, r.day, DayKind(r.kind), r.name) for r in rows
    )
    _CALENDARS[key] = ((count, top), cal)
    return cal


_CALENDARS: dict[str, tuple[tuple[int, int | None], WorkCalendar]] = {}


def seed_calendar(session: Session) -> int:
    """Insert every year ``chinesecalendar`` knows that the table does not hold yet."""
    have = set(session.scalars(select(WfCalendarDay.year).distinct()))
    source = f"chinesecalendar {_pkg_version('chinesecalendar')}"
    now = datetime.now(UTC)
    rows = [
        {"year": r.year, "day": r.date, "kind": r.kind.value, "name": r.name, "source": source,
         "created_at": now}
        for r in chinesecalendar_records(skip_unknown=True) if r.year not in have
    ]
    if rows:
        session.execute(insert(WfCalendarDay), rows)
    return len(rows)


@dataclass(frozen=True)
class CalendarImport:
    """What a holiday-notice import changed."""

    year: int
    days: int
    recomputed: int
    still_provisional: int


def import_calendar(
    session: Session,
    records: Sequence[CalendarRecord],
    *,
    actor: str,
    now: datetime,
    source: str = "",
) -> CalendarImport:
    """Store a year's holiday notice (replacing that year) and recompute provisional deadlines.

    Parameters
    ----------
    session
        Unit of work: the calendar, the recomputed clocks and the audit event commit together.
    records
        Validated records of one year (:func:`layers.workflow.calendar.parse_holiday_notice`).
    actor, now
        Who imports, and when.
    source
        Where the notice came from (file name, notice number).

    Returns
    -------
    CalendarImport
    """
    years = {r.year for r in records}
    if len(years) != 1:
        raise Invalid("records", sorted(years), "a notice holds exactly one year")
    (year,) = years
    load_calendar(session)  # make sure the package's years are present before adding one
    before = session.scalar(
        select(func.count()).select_from(WfCalendarDay).where(WfCalendarDay.year == year)
    )
    session.execute(delete(WfCalendarDay).where(WfCalendarDay.year == year))
    session.execute(insert(WfCalendarDay), [
        {"year": r.year, "day": r.date, "kind": r.kind.value, "name": r.name,
         "source": source or "holiday notice", "created_at": now}
        for r in records
    ])
    cal = load_calendar(session)
    recomputed, still = recompute_provisional(session, cal)
    audit.record(session, [audit.EventIn(
        at=now, actor=actor, action="calendar.import", entity="calendar", entity_id=str(year),
        before={"days": int(before or 0)},
        after={"days": len(records), "recomputed": recomputed, "source": source},
    )])
    return CalendarImport(year, len(records), recomputed, still)


def recompute_provisional(session: Session, cal: WorkCalendar) -> tuple[int, int]:
    """Recompute every running provisional clock on ``cal``; returns (recomputed, still provisional).

    Lead due times and case conclusion dates follow their clocks.
    """
    clocks = session.scalars(
        select(WfClock).where(WfClock.provisional.is_(True), WfClock.stopped_at.is_(None))
    ).all()
    still = 0
    touched: set[int] = set()
    for c in clocks:
        if c.due_at is None or c.amount is None or c.unit is None:
            continue
        d = recompute(_deadline_of(c), cal)
        c.due_at = d.due_at
        c.provisional = d.provisional
        c.warn_at = _warn_at(c.started_at, d.due_at, DEFAULT_POLICY)
        still += int(d.provisional)
        touched.add(c.lead_id)
    session.flush()
    _sync_due(session, touched)
    return len(clocks), still


def calendar_days(session: Session, year: int) -> list[dict[str, Any]]:
    """The stored holidays and swapped working days of ``year``, by date."""
    load_calendar(session)
    rows = session.scalars(
        select(WfCalendarDay).where(WfCalendarDay.year == year).order_by(WfCalendarDay.day)
    ).all()
    return [{"date": r.day.isoformat(), "kind": r.kind, "name": r.name, "source": r.source}
            for r in rows]


# ------------------------------------------------------------------------------------- clocks


def _groups(group: str | None, urgency: str) -> list[str]:
    out = [group] if group else []
    if urgency in FAST_TRACK_URGENCIES:
        out.append("fast_track")
    return out


def _warn_at(started: datetime, due: datetime | None, policy: Policy) -> datetime | None:
    if due is None:
        return None
    return started + (due - started) * policy.yellow_share


def _deadline_of(c: WfClock) -> Deadline:
    return Deadline(
        node=Node(c.node), started_at=c.started_at, due_at=c.due_at or c.started_at,
        rule_id=c.rule_id or "", provisional=c.provisional, amount=c.amount or 0,
        unit=Unit(c.unit or Unit.WORKING_DAYS.value), extension_days=c.extension_days,
        extensions=c.extensions,
    )


@dataclass
class _Regime:
    """What deadline rules need to know about a lead."""

    channel: str
    category: str
    groups: list[str]
    urgency: str


def _clock_row(
    lead_id: int, node: Node, regime: _Regime, body: str | None, now: datetime,
    cal: WorkCalendar, rules: DeadlineRules, policy: Policy,
) -> dict[str, Any]:
    try:
        d = rules.due_for(node, regime.channel, regime.category, regime.groups, regime.urgency,
                          now, cal)
    except NoApplicableRuleError:
        d = None
    return {
        "lead_id": lead_id, "node": node.value, "body_code": body, "started_at": now,
        "due_at": d.due_at if d else None, "base_due_at": d.due_at if d else None,
        "provisional": bool(d and d.provisional), "rule_id": d.rule_id if d else None,
        "amount": d.amount if d else None, "unit": d.unit.value if d else None,
        "extensions": 0, "extension_days": 0,
        "warn_at": _warn_at(now, d.due_at if d else None, policy),
    }


def open_cases(
    session: Session,
    lead_ids: Sequence[int],
    *,
    now: datetime,
    cal: WorkCalendar | None = None,
    rules: DeadlineRules | None = None,
    policy: Policy = DEFAULT_POLICY,
) -> int:
    """Open the workflow of newly taken-in leads: case rows and the first node clocks.

    A lead the intake dispatched automatically starts the ``sign`` and ``conclude`` clocks (as a
    ``dispatch`` transition would); one left in ``received`` starts ``accept``. Set-based: one
    read of the leads, one bulk insert per table, one bulk update of due times.

    Parameters
    ----------
    session
        The intake's unit of work.
    lead_ids
        Ids of the leads just inserted.
    now
        Receipt time.
    cal, rules
        Calendar and deadline rules (default: from the database / the project table).
    policy
        Warning thresholds.

    Returns
    -------
    int
        Number of cases opened.
    """
    if not lead_ids:
        return 0
    cal = cal or load_calendar(session)
    rules = rules or default_rules()
    memo: dict[tuple[Any, ...], dict[str, Any]] = {}
    cases: list[dict[str, Any]] = []
    clocks: list[dict[str, Any]] = []
    dues: list[dict[str, Any]] = []
    for start in range(0, len(lead_ids), CHUNK):
        chunk = list(lead_ids[start:start + CHUNK])
        rows = session.execute(
            select(Lead.id, Lead.channel, Lead.category_code, Lead.urgency, Lead.status,
                   Lead.body_code, Category.group, *_COPIED_FROM_LEAD)
            .join(Category, Category.code == Lead.category_code)
            .where(Lead.id.in_(chunk))
        ).all()
        for r in rows:
            regime = _Regime(r.channel, r.category_code, _groups(r.group, r.urgency), r.urgency)
            dispatched = r.status == State.DISPATCHED.value
            nodes = (Node.SIGN, Node.CONCLUDE) if dispatched else (Node.ACCEPT,)
            made: dict[Node, dict[str, Any]] = {}
            for n in nodes:
                # Deadlines depend only on the regime here (same start time): compute once.
                key = (n, r.channel, r.category_code, r.urgency, r.group)
                if key not in memo:
                    memo[key] = _clock_row(0, n, regime, None, now, cal, rules, policy)
                made[n] = {**memo[key], "lead_id": r.id,
                           "body_code": r.body_code if dispatched else None}
            clocks.extend(made.values())
            sign, conclude = made.get(Node.SIGN), made.get(Node.CONCLUDE)
            cases.append({
                "lead_id": r.id,
                "first_dispatched_at": now if dispatched else None,
                "first_sign_due_at": sign["due_at"] if sign else None,
                "conclude_due_at": conclude["due_at"] if conclude else None,
                "dispatch_count": int(dispatched),
                **_lead_copies(r),
            })
            lead_due = (conclude or made[Node.ACCEPT])["due_at"]
            dues.append({"b_id": r.id, "b_due": lead_due})
    # Core inserts on the tables: the ORM's bulk path emits one statement per row here.
    case_t = WfCase.metadata.tables[WfCase.__tablename__]
    clock_t = WfClock.metadata.tables[WfClock.__tablename__]
    # In the order of the daily rollup's key, which the insert trigger updates row by row: two
    # intakes committing at once then lock rollup rows in the same order and cannot deadlock.
    cases.sort(key=lambda c: (str(c.get("lead_received_at")), str(c.get("city_code")), str(c.get("county_code")),
                              str(c.get("township_code")), str(c.get("body_code")), c["lead_id"]))
    bulk_insert(session, case_t, cases, chunk=CHUNK)
    bulk_insert(session, clock_t, clocks, chunk=CHUNK)
    if dues and session.get_bind().dialect.name == "postgresql":
        # One statement for the whole batch instead of one pipelined UPDATE per lead.
        session.execute(
            text("UPDATE leads SET due_at = u.due FROM unnest(CAST(:ids AS integer[]), "
                 "CAST(:dues AS timestamptz[])) AS u(id, due) WHERE leads.id = u.id"),
            {"ids": [d["b_id"] for d in dues], "dues": [d["b_due"] for d in dues]},
        )
    elif dues:
        # Core UPDATE on the table: opening is part of intake, not a change that bumps the version.
        session.execute(
            update(LEADS_T).where(LEADS_T.c.id == bindparam("b_id"))
            .values(due_at=bindparam("b_due")),
            dues,
        )
    return len(cases)


#: Lead columns copied onto the case row (kept equal afterwards by the trigger of migration 0004).
_COPIED_FROM_LEAD = (Lead.status.label("c_status"), Lead.closed_at.label("c_closed_at"),
                     Lead.received_at.label("c_received_at"), Lead.city_code.label("c_city"),
                     Lead.county_code.label("c_county"), Lead.township_code.label("c_township"))


def _lead_copies(r: Any) -> dict[str, Any]:
    return {"lead_status": r.c_status, "lead_closed_at": r.c_closed_at,
            "lead_received_at": r.c_received_at, "city_code": r.c_city, "county_code": r.c_county,
            "township_code": r.c_township, "body_code": r.body_code}


def _sync_due(session: Session, lead_ids: Iterable[int]) -> None:
    """Set each lead's due time (and the case's conclusion date) from its running clocks."""
    ids = sorted(set(lead_ids))
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start:start + CHUNK]
        running = session.execute(
            select(WfClock.lead_id, WfClock.node, WfClock.due_at)
            .where(WfClock.lead_id.in_(chunk), WfClock.stopped_at.is_(None))
        ).all()
        by_lead: dict[int, dict[str, datetime | None]] = {}
        for r in running:
            by_lead.setdefault(r.lead_id, {})[r.node] = r.due_at
        rows = []
        for lid in chunk:
            nodes = by_lead.get(lid, {})
            if Node.CONCLUDE.value in nodes:
                due = nodes[Node.CONCLUDE.value]
            else:
                due = min((d for d in nodes.values() if d is not None), default=None)
            if nodes:
                rows.append({"b_id": lid, "b_due": due,
                             "b_conc": nodes.get(Node.CONCLUDE.value)})
        if rows:
            session.execute(
                update(LEADS_T).where(LEADS_T.c.id == bindparam("b_id"))
                .values(due_at=bindparam("b_due")), rows)
            conc = [r for r in rows if r["b_conc"] is not None]
            if conc:
                session.execute(
                    update(CASES_T)
                    .where(CASES_T.c.lead_id == bindparam("b_id"))
                    .values(conclude_due_at=bindparam("b_conc")), conc)


# ---------------------------------------------------------------------------------- transitions


_WF_ROLES = {r.value for r in Role}
#: Pseudo jurisdiction of a lead no polygon holds: the city-wide queue, which only a city-wide
#: principal (whose lead scope includes unlocated leads) can act on.
UNLOCATED = "(unlocated)"


def _codes(lead: Lead) -> frozenset[str]:
    codes = frozenset(c for c in (lead.city_code, lead.county_code, lead.township_code) if c)
    return codes or frozenset({UNLOCATED})


def actor_for(p: Principal, lead: Lead) -> tr.Actor:
    """The transition-table actor of principal ``p`` acting on ``lead``.

    An empty jurisdiction or body scope means the whole city / every body, so the actor holds the
    lead's own codes or body for that dimension.
    """
    codes = _codes(lead)
    return tr.Actor(
        user_id=p.username,
        roles=frozenset(Role(r) for r in p.roles if r in _WF_ROLES),
        jurisdictions=frozenset(p.scope_codes) if p.scope_codes else codes,
        bodies=(frozenset(p.scope_bodies) if p.scope_bodies
                else frozenset({lead.body_code}) if lead.body_code else frozenset()),
    )


def _case_view(session: Session, lead: Lead, wf: WfCase, rules: DeadlineRules) -> tr.CaseView:
    running = session.scalars(
        select(WfClock).where(WfClock.lead_id == lead.id, WfClock.stopped_at.is_(None))
    ).all()
    pending = session.scalar(
        select(WfExtension).where(WfExtension.lead_id == lead.id, WfExtension.status == "pending")
    )
    group = session.scalar(select(Category.group).where(Category.code == lead.category_code))
    limit = rules.extension_limit(lead.channel, lead.category_code,
                                  _groups(group, lead.urgency), lead.urgency)
    return tr.CaseView(
        id=str(lead.id),
        state=State(lead.status),
        city_code=lead.city_code or (UNLOCATED if not _codes(lead) - {UNLOCATED} else None),
        county_code=lead.county_code, township_code=lead.township_code,
        body=lead.body_code,
        assignee_id=wf.assignee_id,
        clocks=tuple(
            tr.NodeClock(Node(c.node), c.started_at, c.due_at, c.urged_at is not None,
                         c.supervised_at is not None, c.provisional)
            for c in running
        ),
        pending_extension=(
            tr.PendingExtension(Node(pending.node), pending.days_requested, pending.requested_at)
            if pending else None
        ),
        extensions_used=wf.extensions_used,
        extension_days_used=wf.extension_days_used,
        extension_limit=limit,
        parent_id=str(lead.parent_id) if lead.parent_id else None,
        version=lead.row_version,
    )


def _case_row(session: Session, lead_id: int) -> WfCase:
    wf = session.get(WfCase, lead_id)
    if wf is None:
        # Leads stored before the workflow existed get their case row on first use.
        lead = session.get(Lead, lead_id)
        copies = {} if lead is None else {
            "lead_status": lead.status, "lead_closed_at": lead.closed_at,
            "lead_received_at": lead.received_at, "city_code": lead.city_code,
            "county_code": lead.county_code, "township_code": lead.township_code,
            "body_code": lead.body_code}
        wf = WfCase(lead_id=lead_id, **copies, dispatch_count=0, return_count=0, body_changes=0,
                    verify_count=0, verify_fail_count=0, extensions_used=0,
                    extension_days_used=0, reopen_count=0, urged=False, supervised=False)
        session.add(wf)
        session.flush()
    return wf


def _domain_error(exc: tr.TransitionError, lead: Lead) -> Exception:
    msg = str(exc)
    if isinstance(exc, tr.UnknownActionError):
        return Invalid("action", msg.split("'")[1] if "'" in msg else msg,
                       f"one of {[a.value for a in tr.default_table().actions]}")
    if isinstance(exc, tr.PayloadError):
        err = Invalid(exc.field_name, None, msg)
        err.message = msg
        err.args = (msg,)
        return err
    if isinstance(exc, tr.RoleNotAllowedError | tr.OutOfScopeError):
        return Forbidden(msg)
    return Conflict(msg, state=lead.status, version=lead.row_version)


@dataclass(frozen=True)
class TransitionOutcome:
    """What a transition did, for the caller and the API."""

    lead_id: int
    code: str
    action: str
    role: str
    state_before: str
    state_after: str
    version: int
    due_at: datetime | None
    clocks: list[dict[str, Any]] = field(default_factory=list)


def _load(session: Session, p: Principal, ref: str) -> Lead:
    cond = Lead.code == ref
    # isascii: str.isdigit() also accepts '²' and other digits int() refuses.
    if ref.isascii() and ref.isdigit() and len(ref) < 12:
        cond = cond | (Lead.id == int(ref))
    lead = session.scalar(select(Lead).where(cond, lead_scope_clause(p)))
    if lead is None:
        raise NotFound(f"no lead {ref!r}", field="lead")
    return lead


def allowed_actions(session: Session, p: Principal, ref: str) -> dict[str, Any]:
    """Actions ``p`` could attempt on lead ``ref`` now (state, role and scope fit)."""
    lead = _load(session, p, ref)
    wf = _case_row(session, lead.id)
    view = _case_view(session, lead, wf, default_rules())
    acts = tr.default_table().allowed_actions(view, actor_for(p, lead))
    return {"lead": lead.code, "state": lead.status, "version": lead.row_version,
            "actions": [a.value for a in acts]}


def transition(
    session: Session,
    principal: Principal,
    lead_ref: str,
    action: str,
    payload: Mapping[str, Any],
    now: datetime,
    *,
    expected_version: int | None = None,
    cal: WorkCalendar | None = None,
    rules: DeadlineRules | None = None,
    policy: Policy = DEFAULT_POLICY,
) -> TransitionOutcome:
    """Apply one workflow action to a lead and persist everything it changes.

    Parameters
    ----------
    session
        Unit of work: lead, workflow rows and the audit event commit together.
    principal
        Who acts (roles and scope).
    lead_ref
        Lead code or numeric id (out of scope reads as absent).
    action
        A transitions-table action (``dispatch``, ``sign``, ``return``, …).
    payload
        The action's fields (``reason``, ``body``, ``evidence_note``, …).
    now
        Time of the action (aware).
    expected_version
        The ``row_version`` the client saw; a different current version is a conflict.
    cal, rules, policy
        Calendar (default: from the database), deadline rules, warning thresholds.

    Returns
    -------
    TransitionOutcome

    Raises
    ------
    NotFound
        No such lead in the principal's scope.
    Forbidden
        The principal's roles or scope do not allow the action.
    Invalid
        Unknown action or a bad payload field (named).
    Conflict
        Wrong state, extension rules, or a concurrent change (carries the current state).
    """
    lead = _load(session, principal, lead_ref)
    if expected_version is not None and expected_version != lead.row_version:
        raise Conflict(
            f"lead {lead.code} is at version {lead.row_version} (state {lead.status!r}), not "
            f"{expected_version}; reload and retry", state=lead.status, version=lead.row_version)
    rules = rules or default_rules()
    wf = _case_row(session, lead.id)
    view = _case_view(session, lead, wf, rules)
    actor = actor_for(principal, lead)
    clean_payload = dict(payload)
    parent: Lead | None = None
    if action == Action.MERGE.value and clean_payload.get("parent_id") is not None:
        parent = _load(session, principal, str(clean_payload["parent_id"]))
        clean_payload["parent_id"] = str(parent.id)
    if action in (Action.DISPATCH.value, Action.REOPEN_REDISPATCH.value) and "body" in payload:
        _check_body(session, payload["body"])
    if action == Action.FEEDBACK.value and lead.status == State.MERGED.value:
        _check_child_feedback(session, lead, wf)
    try:
        res = tr.apply(view, action, actor, clean_payload, now)
    except tr.TransitionError as exc:
        raise _domain_error(exc, lead) from None
    if parent is not None and parent.status == State.MERGED.value:
        raise Conflict(f"lead {parent.code} is itself merged; merge into its parent instead",
                       state=lead.status, version=lead.row_version)
    now = now.astimezone(UTC)
    cal = cal or load_calendar(session)
    ch = res.changes
    before_body = lead.body_code
    state_before = lead.status

    # 1. The lead row first: the version check happens here, before anything else is written.
    lead.status = res.state_after.value
    lead.updated_at = now
    if "body" in ch:
        lead.body_code = ch["body"]
    if "parent_id" in ch:
        lead.parent_id = int(ch["parent_id"])
    if res.state_after in (State.CLOSED, State.MERGED) and state_before != res.state_after.value:
        lead.closed_at = now
    elif res.state_after.value in {s.value for s in OPEN_STATES}:
        lead.closed_at = None
    try:
        session.flush()
    except StaleDataError:
        session.rollback()
        current = session.execute(
            select(Lead.status, Lead.row_version).where(Lead.id == lead.id)
        ).one()
        raise Conflict(
            f"lead {lead.code} was changed by someone else (now state {current.status!r}, "
            f"version {current.row_version}); reload and retry",
            state=current.status, version=current.row_version,
        ) from None

    act = res.action
    regime = _Regime(lead.channel, lead.category_code,
                     _groups(session.scalar(select(Category.group)
                                            .where(Category.code == lead.category_code)),
                             lead.urgency), lead.urgency)
    clock_log = _apply_clocks(session, lead, res, now, cal, rules, regime, policy, wf)

    # 2. Case row, extensions, evidence, dispatch history.
    if "assignee_id" in ch:
        wf.assignee_id = ch["assignee_id"]
    if act in (Action.DISPATCH, Action.REOPEN_REDISPATCH):
        wf.dispatch_count += 1
        if wf.first_dispatched_at is None:
            wf.first_dispatched_at = now
        if before_body is not None and ch.get("body") != before_body:
            wf.body_changes += 1
        session.add(Dispatch(
            lead_id=lead.id, at=now, actor=principal.username,
            trigger="dispatch" if act == Action.DISPATCH else "redispatch",
            boundary_version_id=lead.boundary_version_id, city_code=lead.city_code,
            county_code=lead.county_code, township_code=lead.township_code,
            body_code=lead.body_code, method="manual",
            reason=str(payload.get("note") or payload.get("reason") or ""),
        ))
    elif act == Action.SIGN and wf.first_signed_at is None:
        wf.first_signed_at = now
    elif act == Action.RETURN:
        wf.return_count += 1
        _notify(session, [{
            "dedup_key": f"redispatch:{lead.id}:{lead.row_version}", "kind": "redispatch",
            "lead_id": lead.id, "to_body": None, "to_jurisdiction": lead.county_code,
            "message": f"退单 {lead.code} returned by {before_body}: "
                       f"{res.events[0].get('reason') or ''}",
            "created_at": now,
        }], session.get_bind().dialect.name)
    elif act in (Action.VERIFY_PASS, Action.VERIFY_FAIL):
        wf.verify_count += 1
        wf.verify_fail_count += int(act == Action.VERIFY_FAIL)
    elif act == Action.FEEDBACK:
        wf.feedback_at = now
        session.add(WfEvidence(lead_id=lead.id, kind="feedback", note=payload["feedback_note"],
                               photo_refs=[], actor=principal.username, at=now))
        if state_before == State.MERGED.value:
            # A merged child's own complainant is told the parent's result: the obligation ends.
            wf.feedback_owed = False
            fb = duplicates.running_feedback_clock(session, lead.id)
            if fb is not None:
                fb.stopped_at, fb.stop_action = now, act.value
                clock_log.append({"op": "stop", "node": Node.FEEDBACK.value, "clock_id": fb.id})
    elif act == Action.RETURN_VISIT:
        wf.return_visit_at = now
        wf.satisfaction = str(ch["satisfaction"])
    elif act == Action.RECTIFY:
        lon, lat = float(payload["gps_lon"]), float(payload["gps_lat"])
        session.add(WfEvidence(
            lead_id=lead.id, kind="rectify", note=payload["evidence_note"],
            photo_refs=list(payload["photo_refs"]), gps_lon=lon, gps_lat=lat,
            geom=point_ewkt(lon, lat), actor=principal.username, at=now))
    elif act in (Action.REOPEN, Action.REOPEN_REDISPATCH):
        pass
    if ch.get("rebound"):
        wf.reopen_count += 1
    if act == Action.MERGE:
        duplicates.on_merge(session, lead, wf)
        if parent is not None and parent.status == State.CLOSED.value and wf.feedback_owed:
            _owe_feedback(session, [lead], now, cal, rules, policy)
    if res.state_after == State.CLOSED and state_before != State.CLOSED.value:
        _owe_feedback(session, duplicates.children_owed(session, lead.id), now, cal, rules, policy)
    if act == Action.EXTENSION_REQUEST:
        pe = ch["pending_extension"]
        clock = _running(session, lead.id, pe.node)
        session.add(WfExtension(
            lead_id=lead.id, clock_id=clock.id if clock else None, node=pe.node.value,
            body_code=lead.body_code, days_requested=pe.days, reason=str(payload["reason"]),
            requested_by=principal.username, requested_at=now))
    elif act in (Action.EXTENSION_APPROVE, Action.EXTENSION_REFUSE) or (
        "pending_extension" in ch and ch["pending_extension"] is None
    ):
        pending = session.scalar(select(WfExtension).where(
            WfExtension.lead_id == lead.id, WfExtension.status == "pending"))
        if pending is not None:
            approved = act == Action.EXTENSION_APPROVE
            pending.status = ("approved" if approved else "refused"
                              if act == Action.EXTENSION_REFUSE else "lapsed")
            pending.decided_by = principal.username
            pending.decided_at = now
            pending.decision_reason = str(payload.get("reason") or "")
            if approved:
                ext = next(e for e in clock_log if e["op"] == "extend")
                pending.days_granted = ext["days"]
                pending.due_before = ext["due_before"]
                pending.due_after = ext["due_after"]
    if "extensions_used" in ch:
        wf.extensions_used = ch["extensions_used"]
        wf.extension_days_used = ch["extension_days_used"]
    if act in (Action.URGE, Action.SUPERVISE):
        wf.urged = wf.urged or act == Action.URGE
        wf.supervised = wf.supervised or act == Action.SUPERVISE
    session.flush()
    _sync_due(session, [lead.id])
    session.refresh(lead, ["due_at"])

    ev = res.events[0]
    audit.record(session, [audit.EventIn(
        at=now, actor=principal.username, action=f"lead.{act.value}", entity="lead",
        entity_id=str(lead.id), before=ev["before"] or {},
        after={**ev["after"], "role": res.role.value, "payload": ev["payload"],
               "clocks": [{k: v for k, v in e.items() if k != "clock_id"} for e in clock_log],
               "version": lead.row_version},
        reason=str(ev.get("reason") or ""),
    )])
    return TransitionOutcome(
        lead_id=lead.id, code=lead.code, action=act.value, role=res.role.value,
        state_before=state_before, state_after=lead.status, version=lead.row_version,
        due_at=lead.due_at, clocks=clock_log,
    )


def _check_child_feedback(session: Session, lead: Lead, wf: WfCase) -> None:
    """Feedback on a merged child: owed, and its parent's result exists (the parent closed)."""
    if not wf.feedback_owed:
        raise Conflict(f"lead {lead.code} is merged and owes its complainant no feedback "
                       "(already given)", state=lead.status, version=lead.row_version)
    parent = session.execute(select(Lead.code, Lead.status).where(Lead.id == lead.parent_id)).one_or_none()
    if parent is None or parent.status != State.CLOSED.value:
        raise Conflict(f"lead {lead.code} is merged into {parent.code if parent else '?'} "
                       f"(state {parent.status if parent else '?'!r}); its feedback waits for "
                       "the parent to close", state=lead.status, version=lead.row_version)


def _owe_feedback(session: Session, children: Sequence[Lead], now: datetime, cal: WorkCalendar,
                  rules: DeadlineRules, policy: Policy) -> None:
    """Start the ``feedback`` clock of merged children whose parent closed, and tell dispatch."""
    dialect = session.get_bind().dialect.name
    for child in children:
        if duplicates.running_feedback_clock(session, child.id) is not None:
            continue
        regime = _Regime(child.channel, child.category_code,
                         _groups(session.scalar(select(Category.group)
                                                .where(Category.code == child.category_code)),
                                 child.urgency), child.urgency)
        row = _clock_row(child.id, Node.FEEDBACK, regime, child.body_code, now, cal, rules, policy)
        clock = WfClock(**row)
        session.add(clock)
        session.flush()
        _notify(session, [{
            "dedup_key": f"feedback_owed:{child.id}:{clock.id}", "kind": "feedback",
            "lead_id": child.id, "clock_id": clock.id, "node": Node.FEEDBACK.value,
            "to_body": None, "to_jurisdiction": child.county_code,
            "message": f"反馈: {child.code} was merged; its parent closed — tell its complainant",
            "created_at": now,
        }], dialect)


def _check_body(session: Session, code: Any) -> None:
    known = session.scalars(select(Body.code).where(Body.active.is_(True)).order_by(Body.code)).all()
    if str(code) not in known:
        raise Invalid("body", code, f"an active body code, one of {list(known)}")


def _running(session: Session, lead_id: int, node: Node) -> WfClock | None:
    return session.scalar(select(WfClock).where(
        WfClock.lead_id == lead_id, WfClock.node == node.value, WfClock.stopped_at.is_(None)))


def _apply_clocks(
    session: Session, lead: Lead, res: tr.TransitionResult, now: datetime, cal: WorkCalendar,
    rules: DeadlineRules, regime: _Regime, policy: Policy, wf: WfCase,
) -> list[dict[str, Any]]:
    log: list[dict[str, Any]] = []
    dialect = session.get_bind().dialect.name
    for e in res.clocks:
        clock = _running(session, lead.id, e.node)
        if e.op == tr.ClockOp.STOP and clock is not None:
            clock.stopped_at = now
            clock.stop_action = res.action.value
            log.append({"op": "stop", "node": e.node.value, "clock_id": clock.id})
        elif e.op == tr.ClockOp.START:
            row = _clock_row(lead.id, e.node, regime, lead.body_code, now, cal, rules, policy)
            new = WfClock(**row)
            session.add(new)
            session.flush()
            if e.node == Node.SIGN and wf.first_sign_due_at is None:
                wf.first_sign_due_at = row["due_at"]
            log.append({"op": "start", "node": e.node.value, "clock_id": new.id,
                        "due_at": row["due_at"], "provisional": row["provisional"],
                        "rule_id": row["rule_id"]})
        elif e.op == tr.ClockOp.EXTEND and clock is not None:
            old = clock.due_at
            d = apply_extension(_deadline_of(clock), int(e.days or 0), cal)
            clock.due_at, clock.provisional = d.due_at, d.provisional
            clock.extensions, clock.extension_days = d.extensions, d.extension_days
            clock.warn_at = _warn_at(clock.started_at, d.due_at, policy)
            # A moved deadline may be warned about again.
            clock.yellow_at = clock.red_at = None
            log.append({"op": "extend", "node": e.node.value, "clock_id": clock.id,
                        "days": e.days, "due_before": old, "due_after": d.due_at})
        elif e.op in (tr.ClockOp.URGE, tr.ClockOp.SUPERVISE) and clock is not None:
            kind = e.op.value
            if e.op == tr.ClockOp.URGE:
                clock.urged_at = clock.urged_at or now
            else:
                clock.supervised_at = clock.supervised_at or now
            _notify(session, [_notice(kind, clock.id, lead.id, e.node.value, lead.body_code,
                                      lead.county_code, lead.code, now, manual=True)], dialect)
            log.append({"op": kind, "node": e.node.value, "clock_id": clock.id})
    session.flush()
    return log


# ------------------------------------------------------------------------------------ notices


def _notice(kind: str, clock_id: int, lead_id: int, node: str, body: str | None,
            county: str | None, code: str, now: datetime, *, level: str | None = None,
            manual: bool = False) -> dict[str, Any]:
    labels = {"urge": "催办", "supervise": "督办", "warning": "预警"}
    what = f"{labels.get(kind, kind)}: {code} node {node}"
    return {
        # Manual urgings may repeat; automatic ones happen once per clock and kind.
        "dedup_key": f"{kind}:{level or ''}:{clock_id}" + (f":{now.isoformat()}" if manual else ""),
        "kind": kind, "level": level, "lead_id": lead_id, "clock_id": clock_id, "node": node,
        "to_body": body, "to_jurisdiction": county, "message": what, "created_at": now,
    }


def _notify(session: Session, rows: list[dict[str, Any]], dialect: str) -> None:
    """Insert notices, skipping any whose key exists (INSERT … ON CONFLICT DO NOTHING)."""
    if not rows:
        return
    table = NOTICES_T
    stmt: Any
    if dialect == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing(index_elements=["dedup_key"])
    else:
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=["dedup_key"])
    for start in range(0, len(rows), CHUNK):
        session.execute(stmt, rows[start:start + CHUNK])


def notices(session: Session, p: Principal, *, kind: str | None = None,
            limit: int = 200) -> list[dict[str, Any]]:
    """Notices on leads in ``p``'s scope, newest first."""
    q = (select(WfNotice, Lead.code).join(Lead, Lead.id == WfNotice.lead_id)
         .where(lead_scope_clause(p)).order_by(WfNotice.id.desc()).limit(limit))
    if kind:
        q = q.where(WfNotice.kind == kind)
    return [{"id": n.id, "kind": n.kind, "level": n.level, "lead": code, "node": n.node,
             "to_body": n.to_body, "to_jurisdiction": n.to_jurisdiction, "message": n.message,
             "created_at": n.created_at} for n, code in session.execute(q)]


# ---------------------------------------------------------------------------------- escalation


@dataclass(frozen=True)
class EscalationReport:
    """Counts of what one pass did (zero everywhere on a repeated pass)."""

    yellow: int = 0
    red: int = 0
    urged: int = 0
    supervised: int = 0


def _flag(session: Session, ids: list[int], column: str, now: datetime) -> list[int]:
    """Set ``column`` on the clocks still without it; return the ids this pass changed."""
    done: list[int] = []
    col = getattr(WfClock, column)
    for start in range(0, len(ids), CHUNK):
        chunk = sorted(ids[start:start + CHUNK])
        done.extend(session.scalars(
            update(WfClock).where(WfClock.id.in_(chunk), col.is_(None))
            .values({column: now}).returning(WfClock.id)
            .execution_options(synchronize_session=False)
        ).all())
    return done


def escalate(
    session: Session,
    now: datetime,
    cal: WorkCalendar | None = None,
    *,
    policy: Policy = DEFAULT_POLICY,
    actor: str = "system",
) -> EscalationReport:
    """One idempotent escalation pass: yellow and red warnings, urging, supervision.

    Parameters
    ----------
    session
        Unit of work.
    now
        The time of the pass (aware).
    cal
        Calendar (default: from the database).
    policy
        Thresholds (urge/supervise delays in working days).
    actor
        Recorded as the acting user of urge and supervise events.

    Returns
    -------
    EscalationReport
    """
    now = now.astimezone(UTC)
    cal = cal or load_calendar(session)
    dialect = session.get_bind().dialect.name
    cols = (WfClock.id, WfClock.lead_id, WfClock.node, WfClock.due_at, WfClock.body_code,
            WfClock.urged_at, WfClock.supervised_at, Lead.code, Lead.body_code.label("lead_body"),
            Lead.county_code)
    running = and_(WfClock.stopped_at.is_(None), Lead.status.in_([s.value for s in OPEN_STATES]))

    yellow_rows = session.execute(
        select(*cols).join(Lead, Lead.id == WfClock.lead_id)
        .where(running, WfClock.yellow_at.is_(None), WfClock.warn_at <= now)
    ).all()
    yellow_ids = set(_flag(session, [r.id for r in yellow_rows], "yellow_at", now))
    _notify(session, [
        _notice("warning", r.id, r.lead_id, r.node, r.body_code or r.lead_body, r.county_code,
                r.code, now, level="yellow")
        for r in yellow_rows if r.id in yellow_ids and r.due_at is not None and r.due_at >= now
    ], dialect)

    overdue = session.execute(
        select(*cols, WfClock.red_at).join(Lead, Lead.id == WfClock.lead_id)
        .where(running, WfClock.due_at < now,
               or_(WfClock.red_at.is_(None), WfClock.urged_at.is_(None),
                   WfClock.supervised_at.is_(None)))
    ).all()
    red_ids = set(_flag(session, [r.id for r in overdue if r.red_at is None], "red_at", now))
    _notify(session, [
        _notice("warning", r.id, r.lead_id, r.node, r.body_code or r.lead_body, r.county_code,
                r.code, now, level="red")
        for r in overdue if r.id in red_ids
    ], dialect)

    steps: dict[Escalation, list[Any]] = {Escalation.URGE: [], Escalation.SUPERVISE: []}
    for r in overdue:
        for step in escalation_step(
            r.due_at, now, cal=cal, already_urged=r.urged_at is not None,
            already_supervised=r.supervised_at is not None,
            urge_after_wd=policy.urge_after_wd, supervise_after_wd=policy.supervise_after_wd,
        ):
            steps[step].append(r)
    report = {"urged": 0, "supervised": 0}
    events: list[audit.EventIn] = []
    for step, column, case_col, key in (
        (Escalation.URGE, "urged_at", "urged", "urged"),
        (Escalation.SUPERVISE, "supervised_at", "supervised", "supervised"),
    ):
        rows = steps[step]
        done = set(_flag(session, [r.id for r in rows], column, now))
        hit = [r for r in rows if r.id in done]
        report[key] = len(hit)
        # Supervision goes to the jurisdiction (leaders, inspectors); urging to the body.
        _notify(session, [
            _notice(step.value, r.id, r.lead_id, r.node,
                    (r.body_code or r.lead_body) if step == Escalation.URGE else None,
                    r.county_code, r.code, now)
            for r in hit
        ], dialect)
        lead_ids = sorted({r.lead_id for r in hit})
        for start in range(0, len(lead_ids), CHUNK):
            session.execute(update(CASES_T)
                            .where(CASES_T.c.lead_id.in_(lead_ids[start:start + CHUNK]))
                            .values({case_col: True}))
        events += [audit.EventIn(
            at=now, actor=actor, action=f"lead.{step.value}", entity="lead",
            entity_id=str(r.lead_id), before={"node": r.node, "due_at": r.due_at},
            after={"role": Role.SYSTEM.value, "node": r.node, "clock_id": r.id,
                   "step": step.value},
            reason=f"node {r.node} overdue since {r.due_at.isoformat()}",
        ) for r in hit]
    if events:
        audit.record(session, events)
    return EscalationReport(len(yellow_ids), len(red_ids), report["urged"], report["supervised"])


# ------------------------------------------------------------------------------------- trail


def trail(session: Session, p: Principal, ref: str) -> dict[str, Any]:
    """A lead's audit events and node clocks (oldest first), within ``p``'s scope."""
    from layers.models import AuditEvent

    lead = _load(session, p, ref)
    events = session.scalars(
        select(AuditEvent).where(AuditEvent.entity == "lead",
                                 AuditEvent.entity_id == str(lead.id))
        .order_by(AuditEvent.seq)
    ).all()
    clocks = session.scalars(
        select(WfClock).where(WfClock.lead_id == lead.id).order_by(WfClock.id)
    ).all()
    wf = session.get(WfCase, lead.id)
    return {
        "lead": lead.code, "state": lead.status, "version": lead.row_version,
        "due_at": lead.due_at, "closed_at": lead.closed_at,
        "case": None if wf is None else {
            "assignee_id": wf.assignee_id, "returns": wf.return_count,
            "rework": wf.verify_fail_count, "extensions": wf.extensions_used,
            "satisfaction": wf.satisfaction, "urged": wf.urged, "supervised": wf.supervised,
            "reopened": wf.reopen_count,
            **duplicates.case_links(session, lead.id),
        },
        "events": [{"seq": e.seq, "at": e.at, "actor": e.actor, "action": e.action,
                    "before": e.before, "after": e.after, "reason": e.reason, "hash": e.hash}
                   for e in events],
        "clocks": [{"node": c.node, "body": c.body_code, "started_at": c.started_at,
                    "due_at": c.due_at, "provisional": c.provisional, "rule_id": c.rule_id,
                    "stopped_at": c.stopped_at, "stop_action": c.stop_action,
                    "extension_days": c.extension_days, "yellow_at": c.yellow_at,
                    "red_at": c.red_at, "urged_at": c.urged_at,
                    "supervised_at": c.supervised_at} for c in clocks],
    }


# -------------------------------------------------------------------------------- KPIs in SQL
#
# Everything reads the narrow ``wf_cases`` rows alone: they carry copies of the lead columns the
# queries filter and group on (status, closure, receipt, jurisdiction, body — kept equal to the
# lead by a trigger) and per-node sums of finished clocks (kept by a trigger on the clocks), or
# their daily rollups. The only rows read elsewhere are the sign clocks of cases that moved
# between bodies (``body_changes > 0``, partial index), whose returns and dispatches belong to
# several bodies, and clocks without a body (intake before dispatch). Node times of clocks that
# ran with another body than their case's have their own daily rollup.

GROUPS = {"body": WfCase.body_code, "county": WfCase.county_code,
          "township": WfCase.township_code}
#: Nodes with per-case sums of finished clocks (``n_<node>``, ``s_<node>`` on ``wf_cases``).
NODE_STATS = tuple(n for n in Node if n != Node.EXTENSION)


def _group_col(by: str) -> Any:
    if by not in GROUPS:
        raise Invalid("by", by, f"one of {sorted(GROUPS)}")
    return GROUPS[by]


def _n(cond: ColumnElement[bool]) -> Any:
    return func.sum(case((cond, 1), else_=0))


def _seconds(session: Session, later: Any, earlier: Any) -> Any:
    """Seconds between two timestamp columns, on either backend."""
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", later - earlier)
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


def _window(q: Any, since: datetime | None, until: datetime | None) -> Any:
    if since is not None:
        q = q.where(WfCase.lead_received_at >= since)
    if until is not None:
        q = q.where(WfCase.lead_received_at < until)
    return q


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


def _analytic(session: Session) -> None:
    """Settings for the KPI aggregates, for the rest of this transaction (PostgreSQL).

    JIT compiling costs more (~0.3 s a query) than it saves here; and with the default random
    page cost the planner hash-joins all 6 M clocks instead of probing the clocks of the few
    cases that moved between bodies through their index.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL jit = off"))
        session.execute(text("SET LOCAL random_page_cost = 1.1"))


def _case_scope(p: Principal) -> ColumnElement[bool]:
    return scope_clause(p, WfCase)


def _day_aligned(t: datetime | None) -> bool:
    return t is None or t.astimezone(UTC).time() == dtime(0)


def _split_window(
    since: datetime | None, until: datetime | None,
) -> tuple[tuple[datetime | None, datetime | None] | None, list[tuple[datetime, datetime]]]:
    """The whole UTC days of ``[since, until)`` (for the rollup) and the partial days at its edges.

    Returns ``(None, [])`` when the window holds no whole day (the caller scans it all).
    """
    def floor(t: datetime) -> datetime:
        return datetime.combine(t.astimezone(UTC).date(), dtime(0), UTC)

    d0 = None if since is None else (since if _day_aligned(since) else floor(since) + timedelta(days=1))
    d1 = None if until is None else floor(until)
    if d0 is not None and d1 is not None and d0 >= d1:
        return None, []
    edges = []
    if since is not None and d0 is not None and since < d0:
        edges.append((since, d0))
    if until is not None and d1 is not None and d1 < until:
        edges.append((d1, until))
    return (d0, d1), edges


def _rollup_group(by: str) -> Any:
    _group_col(by)
    return getattr(WfKpiDaily, f"{by}_code")


def _rollup_window(q: Any, since: datetime | None, until: datetime | None, *,
                   table: Any = WfKpiDaily) -> Any:
    if since is not None:
        q = q.where(table.day >= since.astimezone(UTC).date())
    if until is not None:
        q = q.where(table.day < until.astimezone(UTC).date())
    return q


#: Same text as the predicate of the partial index ``ix_wf_cases_open_due`` (so it is used).
_OPEN_CASE = text("wf_cases.lead_status NOT IN ('closed', 'merged')")


def _kpi_rollup(session: Session, p: Principal, by: str, now: datetime, since: datetime | None,
                until: datetime | None, *,
                late_window: tuple[datetime | None, datetime | None]) -> dict[Any, dict[str, Any]]:
    """KPI counts per group from the daily rollup (whole days ``[since, until)``) plus the
    "now"-dependent counts (unsigned or open and late) of the cases received in ``late_window``."""
    rg = _rollup_group(by)
    q = _rollup_window(select(rg.label("g"), *[
        func.sum(getattr(WfKpiDaily, c)).label(c) for c in KPI_COUNTERS])
        .where(scope_clause(p, WfKpiDaily)).group_by(rg), since, until)
    rows: dict[Any, dict[str, Any]] = {}
    for r in session.execute(q):
        d = r._asdict()
        if by == "body":  # cases that moved: their dispatches and returns come from the clocks
            d["dispatches"] = int(d["dispatches"] or 0) - int(d.pop("m_dispatches") or 0)
            d["returns"] = int(d["returns"] or 0) - int(d.pop("m_returns") or 0)
        else:
            d.pop("m_dispatches"), d.pop("m_returns")
        if d["cases"] or d["dispatches"] or d["returns"]:
            rows[r.g or None] = {**d, "g": r.g or None, "unsigned_late": 0, "open_late": 0}
    g = _group_col(by)
    late = [
        (and_(WfCase.first_signed_at.is_(None), WfCase.first_sign_due_at < now,
              WfCase.lead_status != State.MERGED.value), "unsigned_late"),
        (and_(_OPEN_CASE, WfCase.conclude_due_at < now), "open_late"),
    ]
    for cond, name in late:
        lq = select(g.label("g"), func.count().label("n")).where(cond, _case_scope(p)).group_by(g)
        for r in session.execute(_window(lq, *late_window)):
            rows.setdefault(r.g, {"g": r.g, "cases": 0})[name] = int(r.n)
    return rows


def kpis(
    session: Session,
    p: Principal,
    *,
    by: str = "body",
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """The KPIs of DOMAIN.md per body, county or township, computed in SQL within ``p``'s scope.

    Definitions follow :mod:`layers.workflow.kpi` (merged leads left out everywhere); 退单率 is
    attributed to the body a lead was with when it was returned (its stopped clock's body) when
    grouping by body. 重复投诉率 counts closures a later complaint rebounded (flagged at intake,
    :mod:`layers.workflow.duplicates`). ``since``/``until`` filter on the receipt time.

    Parameters
    ----------
    session
        Any session (read only).
    p
        The reader; scope applies inside the queries.
    by
        ``body``, ``county`` or ``township``.
    now
        "As of" time for overdue counts.
    since, until
        Receipt-time window.

    Returns
    -------
    dict
        ``groups``: one dict per group with counts, rates and ranks; ``names``: the Chinese KPI
        names.
    """
    g = _group_col(by)
    _analytic(session)
    closed = WfCase.lead_status == State.CLOSED.value
    sat = [s.value for s in SATISFIED_ANSWERS]
    answered = [s.value for s in Satisfaction if s != Satisfaction.NOT_REACHED]
    # By body, cases that moved between bodies take their dispatches and returns from the clocks.
    own = WfCase.body_changes == 0 if by == "body" else literal(True)
    q = (
        select(
            g.label("g"),
            func.count().label("cases"),
            _n(closed).label("closed"),
            _n(WfCase.first_signed_at <= WfCase.first_sign_due_at).label("signed_ok"),
            _n(WfCase.first_signed_at.is_not(None)).label("signed"),
            _n(and_(WfCase.first_signed_at.is_(None), WfCase.first_sign_due_at < now))
            .label("unsigned_late"),
            _n(and_(closed, WfCase.lead_closed_at <= WfCase.conclude_due_at)).label("closed_ok"),
            _n(and_(~closed, WfCase.conclude_due_at < now)).label("open_late"),
            _n(WfCase.verify_fail_count > 0).label("reworked"),
            _n(WfCase.verify_count > 0).label("verified"),
            _n(WfCase.extensions_used > 0).label("extended"),
            _n(WfCase.dispatch_count > 0).label("dispatched"),
            _n(WfCase.satisfaction.in_(sat)).label("satisfied"),
            _n(WfCase.satisfaction.in_(answered)).label("answered"),
            # 重复投诉率: closures a later complaint at the same place rebounded (flagged at intake).
            _n(and_(closed, WfCase.rebound_count > 0)).label("repeated"),
            # Every dispatch starts a ``sign`` clock; a return stops one (dispatch_count and
            # return_count count exactly those).
            func.sum(case((own, WfCase.dispatch_count), else_=0)).label("dispatches"),
            func.sum(case((own, WfCase.return_count), else_=0)).label("returns"),
        )
        .where(WfCase.lead_status != State.MERGED.value, _case_scope(p))
        .group_by(g)
    )
    days, edges = _split_window(since, until)
    if days is None:  # a window inside one day: the exact per-case scan
        rows = {r.g: r._asdict() for r in session.execute(_window(q, since, until))}
    else:
        # Whole days from the rollup ("now"-dependent counts over the whole window), the cases
        # received in the partial days at the edges from the per-case scan.
        rows = _kpi_rollup(session, p, by, now, *days, late_window=(since, until))
        for lo, hi in edges:
            for r in session.execute(_window(q, lo, hi)):
                row = rows.setdefault(r.g, {"g": r.g})
                for k, v in r._asdict().items():
                    if k not in ("g", "unsigned_late", "open_late"):
                        row[k] = int(row.get(k) or 0) + int(v or 0)

    if by == "body":
        # Returns and dispatches of cases that changed body, from their clocks: every dispatch
        # starts a ``sign`` clock for the body it went to; a return stops that body's running
        # clock with stop_action 'return'.
        rq = (
            select(WfClock.body_code.label("g"),
                   _n(WfClock.node == Node.SIGN.value).label("dispatches"),
                   _n(WfClock.stop_action == Action.RETURN.value).label("returns"))
            .join(WfCase, WfCase.lead_id == WfClock.lead_id)
            .where(WfCase.body_changes > 0,
                   WfClock.node.in_([Node.SIGN.value, Node.ON_SITE.value]),
                   WfCase.lead_status != State.MERGED.value, _case_scope(p))
            .group_by(WfClock.body_code)
        )
        for rr in session.execute(_window(rq, since, until)):
            row = rows.setdefault(rr.g, {"g": rr.g, "cases": 0})
            row["dispatches"] = int(row.get("dispatches") or 0) + int(rr.dispatches or 0)
            row["returns"] = int(row.get("returns") or 0) + int(rr.returns or 0)

    out: list[dict[str, Any]] = []
    for key, grp in rows.items():
        v = {k: int(grp.get(k) or 0) for k in grp if k != "g"}
        out.append({
            "group": key, **v,
            "signed_in_time": _ratio(v.get("signed_ok", 0),
                                     v.get("signed", 0) + v.get("unsigned_late", 0)),
            "closed_on_time": _ratio(v.get("closed_ok", 0),
                                     v.get("closed", 0) + v.get("open_late", 0)),
            "closure": _ratio(v.get("closed", 0), v.get("cases", 0)),
            "rework": _ratio(v.get("reworked", 0), v.get("verified", 0)),
            "return": _ratio(v.get("returns", 0), v.get("dispatches", 0)),
            "extension": _ratio(v.get("extended", 0), v.get("dispatched", 0)),
            "satisfaction": _ratio(v.get("satisfied", 0), v.get("answered", 0)),
            "repeat": _ratio(v.get("repeated", 0), v.get("closed", 0)),
        })
    # Ties rank in group order (the same whichever way the counts were read).
    out.sort(key=lambda x: (x["group"] is None, str(x["group"])))
    for k in ("signed_in_time", "closed_on_time", "closure", "rework", "return", "extension",
              "satisfaction", "repeat"):
        def order(x: dict[str, Any], k: str = k) -> float:
            return float(x[k]) if k in LOWER_IS_BETTER else -float(x[k])

        ranked = sorted((x for x in out if x[k] is not None), key=order)
        for x in out:
            x.setdefault("rank", {})[k] = None
        for i, x in enumerate(ranked, start=1):
            x["rank"][k] = i
    out.sort(key=lambda x: (x["group"] is None, str(x["group"])))
    return {"by": by, "as_of": now, "groups": out, "names": dict(KPI_NAMES)}


def node_hours(
    session: Session, p: Principal, *, by: str = "body", since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """Mean and count of finished node durations (hours) per group and node, in SQL.

    By body, a clock counts for the body it ran with; otherwise for its case's county or
    township. ``since``/``until`` filter on the case's receipt time.

    Parameters
    ----------
    session
        Any session (read only).
    p
        The reader; scope applies to the case (its current place and body).
    by
        ``body``, ``county`` or ``township``.
    since, until
        Receipt-time window.

    Returns
    -------
    list of dict
        ``group``, ``node``, ``n`` (finished clocks) and ``mean_hours`` per group and node with
        at least one finished clock.
    """
    g = _group_col(by)
    _analytic(session)
    acc: dict[tuple[Any, str], list[float]] = {}

    def add(key: Any, node: str, n: Any, secs: Any, sign: int = 1) -> None:
        a = acc.setdefault((key or None, node), [0, 0.0])
        a[0] += sign * int(n or 0)
        a[1] += sign * float(secs or 0.0)

    # The per-case sums of finished clocks with a body, under the case's group: whole UTC days
    # from the daily rollup, the partial days at the edges (or a window inside one day) case by
    # case.
    days, edges = _split_window(since, until)
    scans = [(since, until)] if days is None else edges
    q = (select(g.label("g"), *[func.sum(getattr(WfCase, f"{pre}_{n.value}")).label(f"{pre}_{n.value}")
                                for n in NODE_STATS for pre in ("n", "s")])
         .where(_case_scope(p)).group_by(g))
    results: list[Any] = [session.execute(_window(q, lo, hi)) for lo, hi in scans]
    if days is not None:
        rg = _rollup_group(by)
        results.append(session.execute(_rollup_window(select(rg.label("g"), *[
            func.sum(getattr(WfKpiDaily, f"{pre}_{n.value}")).label(f"{pre}_{n.value}")
            for n in NODE_STATS for pre in ("n", "s")])
            .where(scope_clause(p, WfKpiDaily)).group_by(rg), *days)))
    for r in (row for res in results for row in res):
        for n in NODE_STATS:
            add(r.g, n.value, getattr(r, f"n_{n.value}"), getattr(r, f"s_{n.value}"))
    secs = cast(_seconds(session, WfClock.stopped_at, WfClock.started_at), Float)
    if by == "body":
        # Clocks that ran with another body than their case's current one (the case moved):
        # the case's sums above hold them, the clock's body gets them. Whole days from their
        # daily rollup, the edges from the clocks of the cases received then.
        ob = WfNodeOtherBodyDaily
        other: list[Any] = []
        if days is not None:
            other.append(session.execute(_rollup_window(
                select(ob.body_code.label("case_body"), ob.clock_body_code.label("clock_body"),
                       ob.node, func.sum(ob.n).label("n"), func.sum(ob.s).label("s"))
                .where(scope_clause(p, ob)).group_by(ob.body_code, ob.clock_body_code, ob.node),
                *days, table=ob)))
        for lo, hi in scans:
            oq = (
                select(WfCase.body_code.label("case_body"), WfClock.body_code.label("clock_body"),
                       WfClock.node, func.count().label("n"), func.sum(secs).label("s"))
                .join(WfClock, WfClock.lead_id == WfCase.lead_id)
                .where(WfClock.stopped_at.is_not(None), WfClock.body_code.is_not(None),
                       WfClock.node.in_([n.value for n in NODE_STATS]),
                       WfClock.body_code != func.coalesce(WfCase.body_code, ""), _case_scope(p))
                .group_by(WfCase.body_code, WfClock.body_code, WfClock.node)
            )
            other.append(session.execute(_window(oq, lo, hi)))
        for r in (row for res in other for row in res):
            add(r.case_body, r.node, r.n, r.s, sign=-1)
            add(r.clock_body, r.node, r.n, r.s)
    # Clocks without a body (intake before dispatch; partial index), under the case's group.
    cg = WfClock.body_code if by == "body" else g
    bq = (
        select(cg.label("g"), WfClock.node, func.count().label("n"), func.sum(secs).label("s"))
        .join(WfCase, WfCase.lead_id == WfClock.lead_id)
        .where(WfClock.stopped_at.is_not(None), WfClock.body_code.is_(None), _case_scope(p))
        .group_by(cg, WfClock.node)
    )
    for r in session.execute(_window(bq, since, until)):
        add(r.g, r.node, r.n, r.s)
    return [{"group": key[0], "node": key[1], "n": int(a[0]),
             "mean_hours": round(a[1] / a[0] / 3600.0, 2)}
            for key, a in acc.items() if a[0] > 0]


# ---------------------------------------------------------------------------------- oversight

OVERSIGHT_KINDS = ("overdue", "returned", "closed_too_fast", "rebounds", "dissatisfied",
                   "extensions", "feedback_owed")


def _qualified(predicate: str) -> str:
    """Prefix the column names of an oversight predicate with ``wf_cases.``."""
    import re

    return re.sub(r"\b([a-z_]+)\b(?= (?:>=|>|=) )", r"wf_cases.\1", predicate)


def oversight(
    session: Session,
    p: Principal,
    kind: str,
    *,
    now: datetime,
    limit: int = 200,
    policy: Policy = DEFAULT_POLICY,
) -> dict[str, Any]:
    """再监督: leads that deserve an inspector's look, counted by body and county, plus a sample.

    Parameters
    ----------
    kind
        ``overdue`` (a running clock past due), ``returned`` (returned twice or more, or moved
        between bodies twice or more), ``closed_too_fast`` (closed within
        ``policy.too_fast_hours`` of the first dispatch), ``rebounds`` (closures reopened, or
        rebounded by a later complaint flagged at intake), ``dissatisfied`` (return visit
        answer), ``extensions`` (approved extensions), ``feedback_owed`` (merged leads whose
        parent closed and whose complainant has had no feedback yet).
    now
        As-of time.
    limit
        Most leads listed (the counts cover all).

    Returns
    -------
    dict
        ``total``, ``by_body``, ``by_county`` and ``items``.
    """
    if kind == "overdue":
        cond: Any = WfCase.lead_id.in_(select(WfClock.lead_id).where(
            WfClock.stopped_at.is_(None), WfClock.due_at < now))
        cond = and_(cond, WfCase.lead_status.in_([s.value for s in OPEN_STATES]))
    elif kind in OVERSIGHT_PREDICATES:
        # The very text of the partial index predicate, so the planner uses the index.
        cond = text(f"({_qualified(OVERSIGHT_PREDICATES[kind])})")
    elif kind == "closed_too_fast":
        cond = and_(WfCase.lead_status == State.CLOSED.value, WfCase.first_dispatched_at.is_not(None),
                    _seconds(session, WfCase.lead_closed_at, WfCase.first_dispatched_at)
                    < literal(policy.too_fast_hours * 3600.0))
    elif kind == "feedback_owed":
        # Merged children whose parent closed (their feedback clock runs) and who had no feedback.
        # Correlated: the few owing cases (partial index) probe their own clocks.
        cond = and_(WfCase.feedback_owed, select(WfClock.id).where(
            WfClock.lead_id == WfCase.lead_id, WfClock.node == Node.FEEDBACK.value,
            WfClock.stopped_at.is_(None)).exists())
    else:
        raise Invalid("kind", kind, f"one of {list(OVERSIGHT_KINDS)}")
    _analytic(session)
    where = and_(cond, _case_scope(p))
    agg = session.execute(
        select(WfCase.body_code, WfCase.county_code, func.count().label("n"))
        .where(where).group_by(WfCase.body_code, WfCase.county_code)
    ).all()
    by_body: dict[str, int] = {}
    by_county: dict[str, int] = {}
    for r in agg:
        by_body[str(r.body_code)] = by_body.get(str(r.body_code), 0) + int(r.n)
        by_county[str(r.county_code)] = by_county.get(str(r.county_code), 0) + int(r.n)
    first = select(WfCase.lead_id).where(where).order_by(WfCase.lead_id).limit(limit).subquery()
    items = session.execute(
        select(Lead.id, Lead.code, Lead.status, Lead.body_code, Lead.county_code,
               Lead.township_code, Lead.due_at, Lead.closed_at, WfCase.return_count,
               WfCase.body_changes, WfCase.first_dispatched_at, WfCase.reopen_count,
               WfCase.satisfaction, WfCase.extensions_used, WfCase.rebound_count)
        .join(first, first.c.lead_id == Lead.id).join(WfCase, WfCase.lead_id == Lead.id)
        .order_by(Lead.id)
    ).all()
    return {
        "kind": kind, "as_of": now, "total": sum(by_body.values()),
        "by_body": by_body, "by_county": by_county,
        "items": [{k: v for k, v in r._asdict().items() if k != "id"} for r in items],
    }
