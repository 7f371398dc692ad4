"""Node deadlines from rules as data: channel × category × urgency → due time.

``data/deadline_rules.csv`` columns::

    rule_id,channel,category,urgency,node,amount,unit,max_count,priority,source,notes

``channel``, ``category`` and ``urgency`` are a value or ``*``; ``category`` also matches a
category *group* (``consultation``, ``fast_track``, …) that the caller passes alongside the
category. ``unit`` is one of :class:`Unit`. Rules with ``node = extension`` are not clocks: they
cap extensions (``amount`` = most days in total, ``max_count`` = most extensions).

Choice of rule: among the applicable rules of priority ≥ 1 the **strictest wins** (earliest due
time; ties go to the higher priority, then the smaller ``rule_id``). Priority-0 rules are
fallbacks, used only when no other rule applies to the node — without that distinction a generic
default would silently cap every longer statutory period (信访's 60 days, for instance).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from layers.workflow.calendar import (
    WorkCalendar,
    add_calendar_days,
    add_elapsed,
    add_working_days,
    add_working_hours,
    end_of_same_day,
)
from layers.workflow.states import Node
from layers.workflow.transitions import ExtensionLimit

DEFAULT_RULES_PATH = Path(__file__).resolve().parents[2] / "data" / "deadline_rules.csv"
ANY = "*"


class Unit(StrEnum):
    """How a rule's ``amount`` is counted (conventions in :mod:`layers.workflow.calendar`)."""

    WORKING_DAYS = "working_days"
    CALENDAR_DAYS = "calendar_days"
    WORKING_HOURS = "working_hours"
    HOURS = "hours"
    MINUTES = "minutes"
    SAME_DAY = "same_day"


class Urgency(StrEnum):
    """Urgency of a lead as set at intake."""

    NORMAL = "normal"
    URGENT = "urgent"
    EMERGENCY = "emergency"


class DeadlineRuleError(ValueError):
    """A deadline rule row is malformed (line and column named)."""


class NoApplicableRuleError(ValueError):
    """No rule covers the node for this channel/category/urgency."""


class ExtensionLimitError(ValueError):
    """An extension would exceed the regime's limit or comes after the deadline."""


@dataclass(frozen=True)
class DeadlineRule:
    """One row of the deadline rules table."""

    rule_id: str
    channel: str
    category: str
    urgency: str
    node: Node
    amount: int
    unit: Unit
    max_count: int | None = None
    priority: int = 1
    source: str = ""
    notes: str = ""

    def matches(self, channel: str, categories: frozenset[str], urgency: str) -> bool:
        """Whether the rule applies to a case with these attributes."""
        return (
            self.channel in (ANY, channel)
            and (self.category == ANY or self.category in categories)
            and self.urgency in (ANY, urgency)
        )


@dataclass(frozen=True)
class Deadline:
    """A node's due time and how it was obtained (enough to recompute it later).

    ``provisional`` is true while a day counted lies in a year the calendar does not know;
    :func:`recompute` after the year is imported gives the definitive due time.
    """

    node: Node
    started_at: datetime
    due_at: datetime
    rule_id: str
    provisional: bool
    amount: int
    unit: Unit
    extension_days: int = 0
    extensions: int = 0


def compute_due(
    start: datetime, amount: int, unit: Unit | str, cal: WorkCalendar
) -> tuple[datetime, bool]:
    """Due time (UTC) and provisional flag for ``amount`` ``unit`` after ``start``.

    Parameters
    ----------
    start
        Timezone-aware start of the node.
    amount
        How many units (``0`` with ``same_day``).
    unit
        A :class:`Unit` value.
    cal
        Working-day calendar.

    Returns
    -------
    (datetime, bool)
    """
    u = Unit(unit)
    if u == Unit.WORKING_DAYS:
        return add_working_days(start, amount, cal)
    if u == Unit.CALENDAR_DAYS:
        return add_calendar_days(start, amount, cal)
    if u == Unit.WORKING_HOURS:
        return add_working_hours(start, amount, cal)
    if u == Unit.HOURS:
        return add_elapsed(start, hours=amount), False
    if u == Unit.MINUTES:
        return add_elapsed(start, minutes=amount), False
    return end_of_same_day(start), False


def _categories(category: str | None, category_group: str | Iterable[str] | None) -> frozenset[str]:
    groups: Iterable[str]
    if category_group is None:
        groups = ()
    elif isinstance(category_group, str):
        groups = (category_group,)
    else:
        groups = category_group
    return frozenset(c for c in (category, *groups) if c)


@dataclass(frozen=True)
class DeadlineRules:
    """The deadline rules table."""

    rules: tuple[DeadlineRule, ...]

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, str]]) -> DeadlineRules:
        """Build from dict rows (CSV or database); raises :class:`DeadlineRuleError`."""
        out = []
        seen: set[str] = set()
        for line, row in enumerate(rows, start=2):
            def cell(name: str, row: Mapping[str, str] = row) -> str:
                return (row.get(name) or "").strip()

            rid = cell("rule_id")
            if not rid:
                raise DeadlineRuleError(f"deadline rules line {line}: 'rule_id' is empty")
            if rid in seen:
                raise DeadlineRuleError(f"deadline rules line {line}: rule_id {rid!r} repeated")
            seen.add(rid)
            try:
                node = Node(cell("node"))
            except ValueError:
                raise DeadlineRuleError(
                    f"deadline rules line {line}, column 'node': {cell('node')!r} is not one of "
                    f"{[n.value for n in Node]}"
                ) from None
            try:
                unit = Unit(cell("unit"))
            except ValueError:
                raise DeadlineRuleError(
                    f"deadline rules line {line}, column 'unit': {cell('unit')!r} is not one of "
                    f"{[u.value for u in Unit]}"
                ) from None
            urgency = cell("urgency") or ANY
            if urgency != ANY and urgency not in {u.value for u in Urgency}:
                raise DeadlineRuleError(
                    f"deadline rules line {line}, column 'urgency': {urgency!r} is not '*' or "
                    f"one of {[u.value for u in Urgency]}"
                )
            ints: dict[str, int | None] = {}
            for name in ("amount", "max_count", "priority"):
                raw = cell(name)
                value = int(raw) if raw.isdigit() else None
                if raw and value is None:
                    raise DeadlineRuleError(
                        f"deadline rules line {line}, column {name!r}: {raw!r} is not a whole "
                        "number ≥ 0"
                    )
                ints[name] = value
            if ints["amount"] is None:
                raise DeadlineRuleError(f"deadline rules line {line}: 'amount' is empty")
            if unit == Unit.SAME_DAY and ints["amount"] != 0:
                raise DeadlineRuleError(
                    f"deadline rules line {line}, column 'amount': same_day takes 0, got "
                    f"{ints['amount']}"
                )
            out.append(
                DeadlineRule(
                    rule_id=rid,
                    channel=cell("channel") or ANY,
                    category=cell("category") or ANY,
                    urgency=urgency,
                    node=node,
                    amount=int(ints["amount"]),
                    unit=unit,
                    max_count=ints["max_count"],
                    priority=1 if ints["priority"] is None else int(ints["priority"]),
                    source=cell("source"),
                    notes=cell("notes"),
                )
            )
        return cls(tuple(out))

    @classmethod
    def load(cls, path: Path | str = DEFAULT_RULES_PATH) -> DeadlineRules:
        """Read a rules CSV (default ``data/deadline_rules.csv``)."""
        with open(path, newline="", encoding="utf-8") as fh:
            return cls.from_rows(csv.DictReader(fh))

    def applicable(
        self,
        node: Node | str,
        channel: str,
        category: str | None,
        category_group: str | Iterable[str] | None,
        urgency: str,
    ) -> list[DeadlineRule]:
        """Rules that apply to the node for this case; fallbacks only if nothing else does."""
        n = Node(node)
        cats = _categories(category, category_group)
        hits = [r for r in self.rules if r.node == n and r.matches(channel, cats, urgency)]
        specific = [r for r in hits if r.priority > 0]
        return specific or hits

    def due_for(
        self,
        node: Node | str,
        channel: str,
        category: str | None,
        category_group: str | Iterable[str] | None,
        urgency: str,
        start: datetime,
        cal: WorkCalendar,
    ) -> Deadline:
        """The deadline of ``node`` started at ``start`` — the strictest applicable rule.

        Parameters
        ----------
        node
            The node starting (``accept``, ``sign``, …, ``conclude``).
        channel
            Intake channel (``12345``, ``12369``, ``xinfang``, ``wechat``, …).
        category
            The lead's category code.
        category_group
            Group(s) of the category (``consultation``, ``fast_track``…), or ``None``.
        urgency
            ``normal``, ``urgent`` or ``emergency``.
        start
            Timezone-aware start of the node.
        cal
            Working-day calendar.

        Returns
        -------
        Deadline

        Raises
        ------
        NoApplicableRuleError
            When no rule (not even a fallback) covers the node.
        """
        n = Node(node)
        if n == Node.EXTENSION:
            raise NoApplicableRuleError("'extension' is a limit, not a clock; use extension_limit")
        rules = self.applicable(n, channel, category, category_group, urgency)
        if not rules:
            raise NoApplicableRuleError(
                f"no deadline rule for node {n.value!r}, channel {channel!r}, category "
                f"{category!r} (groups {category_group!r}), urgency {urgency!r}"
            )
        best: tuple[datetime, int, str] | None = None
        chosen: Deadline | None = None
        for r in rules:
            due, provisional = compute_due(start, r.amount, r.unit, cal)
            key = (due, -r.priority, r.rule_id)
            if best is None or key < best:
                best = key
                chosen = Deadline(n, start, due, r.rule_id, provisional, r.amount, r.unit)
        assert chosen is not None
        return chosen

    def extension_limit(
        self,
        channel: str,
        category: str | None,
        category_group: str | Iterable[str] | None,
        urgency: str,
    ) -> ExtensionLimit | None:
        """The strictest extension limit for the case's regime, or ``None`` (no cap)."""
        rules = self.applicable(Node.EXTENSION, channel, category, category_group, urgency)
        if not rules:
            return None
        big = 10**6  # a missing max_count means "no cap on the count"
        return ExtensionLimit(
            max_count=min(r.max_count if r.max_count is not None else big for r in rules),
            max_days=min(r.amount for r in rules),
        )


@lru_cache(maxsize=1)
def default_rules() -> DeadlineRules:
    """The project's rules table, read once."""
    return DeadlineRules.load(DEFAULT_RULES_PATH)


def due_for(
    node: Node | str,
    channel: str,
    category: str | None,
    category_group: str | Iterable[str] | None,
    urgency: str,
    start: datetime,
    cal: WorkCalendar,
    *,
    rules: DeadlineRules | None = None,
) -> Deadline:
    """Module-level :meth:`DeadlineRules.due_for` over ``rules`` (default: the project table)."""
    return (rules or default_rules()).due_for(
        node, channel, category, category_group, urgency, start, cal
    )


def _extend_due(
    due_at: datetime, unit: Unit, days: int, cal: WorkCalendar
) -> tuple[datetime, bool]:
    # Working-day regimes are extended in working days; all others in calendar days (rolled to a
    # working day), counted from the current due date, whose day is already "used".
    if unit in (Unit.WORKING_DAYS, Unit.WORKING_HOURS):
        return add_working_days(due_at, days, cal)
    return add_calendar_days(due_at, days, cal)


def apply_extension(
    deadline: Deadline,
    days: int,
    cal: WorkCalendar,
    *,
    limit: ExtensionLimit | None = None,
    requested_at: datetime | None = None,
) -> Deadline:
    """Move a deadline by an approved extension of ``days``.

    Parameters
    ----------
    deadline
        The current deadline (possibly already extended).
    days
        Days granted, > 0; working days for working-day rules, calendar days otherwise.
    cal
        Working-day calendar.
    limit
        The regime's cap (:meth:`DeadlineRules.extension_limit`), checked against
        ``deadline.extensions`` and ``deadline.extension_days``.
    requested_at
        When the extension was requested; it must be before the due time.

    Returns
    -------
    Deadline
        With the new due time, ``extension_days`` and ``extensions`` incremented.

    Raises
    ------
    ExtensionLimitError
    """
    if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
        raise ExtensionLimitError(f"'days' must be a positive whole number, got {days!r}")
    if requested_at is not None and requested_at >= deadline.due_at:
        raise ExtensionLimitError(
            f"extension requested at {requested_at.isoformat()}, not before the deadline "
            f"{deadline.due_at.isoformat()} of node {deadline.node.value!r}"
        )
    if limit is not None:
        if deadline.extensions >= limit.max_count:
            raise ExtensionLimitError(
                f"node {deadline.node.value!r} has had {deadline.extensions} extension(s); the "
                f"regime allows {limit.max_count}"
            )
        if deadline.extension_days + days > limit.max_days:
            raise ExtensionLimitError(
                f"extension of {days} days would total {deadline.extension_days + days}; the "
                f"regime allows at most {limit.max_days}"
            )
    due, provisional = _extend_due(deadline.due_at, deadline.unit, days, cal)
    return replace(
        deadline,
        due_at=due,
        provisional=deadline.provisional or provisional,
        extension_days=deadline.extension_days + days,
        extensions=deadline.extensions + 1,
    )


def recompute(deadline: Deadline, cal: WorkCalendar) -> Deadline:
    """The same deadline computed on ``cal`` (e.g. after a new year's notice was imported).

    Extensions are re-applied as one block of ``extension_days`` from the base due time.
    """
    due, provisional = compute_due(deadline.started_at, deadline.amount, deadline.unit, cal)
    if deadline.extension_days:
        due, p = _extend_due(due, deadline.unit, deadline.extension_days, cal)
        provisional |= p
    return replace(deadline, due_at=due, provisional=provisional)
