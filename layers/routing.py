"""Routing: category × jurisdiction → responsible body, as priority-ordered data.

The first matching rule (lowest ``priority``, then lowest id) wins. A lead no rule matches falls
to its territorial government (属地兜底) and is flagged so a dispatcher looks at it. Rules are
never edited in place; :func:`replace_rule` retires the old row, so every lead keeps naming the
rule that routed it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from layers import audit
from layers.errors import Invalid, NotFound
from layers.models import Body, Category, RoutingRule

TERRITORIAL = "TERRITORIAL"


@dataclass(frozen=True)
class Route:
    """The routing decision for one lead."""

    body_code: str
    rule_id: int | None
    fallback: bool
    reason: str


@dataclass(frozen=True)
class _Rule:
    id: int
    priority: int
    category_code: str | None
    category_group: str | None
    jurisdiction_level: str | None
    jurisdiction_code: str | None
    body_code: str


_ROUTERS: dict[str, tuple[tuple[Any, ...], Router]] = {}
_MEMO = "leadgrid.router"  # session.info key: (transaction, router) checked in that transaction
# Whether the cached router is still the one in force: counts and highest ids (built once; every
# intake batch asks).
_STAMP = select(
    select(func.count(RoutingRule.id)).scalar_subquery(),
    select(func.max(RoutingRule.id)).scalar_subquery(),
    select(func.count(RoutingRule.id)).where(RoutingRule.retired_at.is_(None)).scalar_subquery(),
    select(func.count(Category.id)).scalar_subquery(),
    select(func.max(Category.id)).scalar_subquery(),
)


def clear_cache() -> None:
    """Forget every cached :meth:`Router.current` (tests that truncate and reseed call this)."""
    _ROUTERS.clear()


class Router:
    """The active routing rules in memory, with a memo of decisions per distinct key."""

    def __init__(self, rules: list[_Rule], groups: dict[str, str], urgency: dict[str, str] | None = None) -> None:
        self._rules = sorted(rules, key=lambda r: (r.priority, r.id))
        self._groups = groups
        self.urgency: dict[str, str] = dict(urgency or {})
        """Category code → default urgency."""
        self.categories: frozenset[str] = frozenset(groups)
        """The known category codes."""
        self._memo: dict[tuple[str, str | None, str | None, str | None], Route] = {}

    @classmethod
    def load(cls, session: Session) -> Router:
        """Read the rules in force (not retired) and the categories (groups, default urgency)."""
        rows = session.scalars(select(RoutingRule).where(RoutingRule.retired_at.is_(None))).all()
        rules = [
            _Rule(r.id, r.priority, r.category_code, r.category_group, r.jurisdiction_level,
                  r.jurisdiction_code, r.body_code)
            for r in rows
        ]
        groups: dict[str, str] = {}
        urgency: dict[str, str] = {}
        for code, group, urg in session.execute(select(Category.code, Category.group, Category.urgency)):
            groups[code] = group
            urgency[code] = urg
        return cls(rules, groups, urgency)

    @classmethod
    def current(cls, session: Session) -> Router:
        """:meth:`load`, cached per database until a rule or a category is added or retired.

        Rules are only ever added or retired and categories only added, so one cheap query
        (counts and highest ids) tells whether the cached router is still the one in force.
        That check is made once per transaction (a request, an intake batch); later calls in
        the same transaction reuse its answer, unless this session changed a rule meanwhile.
        """
        mine = session.info.get(_MEMO)
        if mine is not None and mine[0] is session.get_transaction():
            return cast(Router, mine[1])
        stamp = tuple(session.connection().execute(_STAMP).one())
        key = str(session.get_bind().engine.url)
        hit = _ROUTERS.get(key)
        if hit is not None and hit[0] == stamp:
            router = hit[1]
        else:
            router = cls.load(session)
            _ROUTERS[key] = (stamp, router)
        session.info[_MEMO] = (session.get_transaction(), router)
        return router

    def route(self, category: str, city: str | None, county: str | None, township: str | None) -> Route:
        """Route one lead.

        Parameters
        ----------
        category
            Category code.
        city, county, township
            The lead's assigned jurisdiction codes (``None`` where unassigned).

        Returns
        -------
        Route
            The body, the rule that chose it, and whether it fell to the territory.
        """
        key = (category, city, county, township)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        codes = {"city": city, "county": county, "township": township}
        group = self._groups.get(category)
        route = None
        for r in self._rules:
            if r.category_code is not None and r.category_code != category:
                continue
            if r.category_group is not None and r.category_group != group:
                continue
            if r.jurisdiction_code is not None and r.jurisdiction_code not in codes.values():
                continue
            if r.jurisdiction_level is not None and codes.get(r.jurisdiction_level) is None:
                continue
            route = Route(r.body_code, r.id, False, f"rule {r.id} (priority {r.priority})")
            break
        if route is None:
            where = township or county or city
            route = Route(
                TERRITORIAL, None, True,
                f"no routing rule for category {category!r}; falls to territory {where or 'unknown'} (属地兜底)",
            )
        self._memo[key] = route
        return route


def seed(session: Session, data_dir: Path, *, now: datetime) -> dict[str, int]:
    """Load bodies, categories and routing rules from ``data/`` where absent (idempotent).

    Parameters
    ----------
    session
        Unit of work.
    data_dir
        Folder with ``bodies.csv``, ``categories.csv``, ``routing_rules.csv``.
    now
        Creation time of new rules.

    Returns
    -------
    dict
        Rows added per table.
    """
    session.info.pop(_MEMO, None)
    added = {"bodies": 0, "categories": 0, "routing_rules": 0}
    known_bodies = set(session.scalars(select(Body.code)))
    with (data_dir / "bodies.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["code"] not in known_bodies:
                session.add(Body(code=row["code"], name=row["name"], name_en=row["name_en"],
                                 kind=row["kind"], remit=row["remit"]))
                added["bodies"] += 1
    known_cats = set(session.scalars(select(Category.code)))
    with (data_dir / "categories.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["code"] not in known_cats:
                session.add(Category(code=row["code"], name=row["name"], name_en=row["name_en"],
                                     group=row["group"], urgency=row["urgency"]))
                added["categories"] += 1
    session.flush()
    if session.scalar(select(RoutingRule.id).limit(1)) is None:
        with (data_dir / "routing_rules.csv").open(encoding="utf-8") as f:
            for row in csv.DictReader(f):
                session.add(RoutingRule(
                    priority=int(row["priority"]),
                    category_code=row["category_code"] or None,
                    category_group=row["category_group"] or None,
                    jurisdiction_level=row["jurisdiction_level"] or None,
                    jurisdiction_code=row["jurisdiction_code"] or None,
                    body_code=row["body_code"], note=row["note"], created_at=now,
                ))
                added["routing_rules"] += 1
    session.flush()
    return added


def _check_rule(session: Session, *, category_code: str | None, category_group: str | None,
                jurisdiction_level: str | None, body_code: str) -> None:
    if session.scalar(select(Body.id).where(Body.code == body_code, Body.active.is_(True))) is None:
        raise Invalid("body_code", body_code, "an active body code (see GET /bodies)")
    if category_code is not None and session.scalar(select(Category.id).where(Category.code == category_code)) is None:
        raise Invalid("category_code", category_code, "a known category code (see GET /categories)")
    groups = set(session.scalars(select(Category.group)))
    if category_group is not None and category_group not in groups:
        raise Invalid("category_group", category_group, f"one of {', '.join(sorted(groups))}")
    if jurisdiction_level not in (None, "city", "county", "township"):
        raise Invalid("jurisdiction_level", jurisdiction_level, "city, county or township")


def add_rule(session: Session, *, priority: int, body_code: str, actor: str, now: datetime,
             category_code: str | None = None, category_group: str | None = None,
             jurisdiction_level: str | None = None, jurisdiction_code: str | None = None,
             note: str = "") -> RoutingRule:
    """Add a routing rule (validated, audited)."""
    _check_rule(session, category_code=category_code, category_group=category_group,
                jurisdiction_level=jurisdiction_level, body_code=body_code)
    rule = RoutingRule(priority=priority, category_code=category_code, category_group=category_group,
                       jurisdiction_level=jurisdiction_level, jurisdiction_code=jurisdiction_code,
                       body_code=body_code, note=note, created_at=now, created_by=actor)
    session.add(rule)
    session.flush()
    session.info.pop(_MEMO, None)
    audit.record(session, [audit.EventIn(now, actor, "routing.add", "routing_rule", str(rule.id), {},
                                         _rule_dict(rule))])
    return rule


def retire_rule(session: Session, rule_id: int, *, actor: str, now: datetime) -> None:
    """Retire a rule; leads it routed keep pointing at it."""
    rule = session.get(RoutingRule, rule_id)
    if rule is None or rule.retired_at is not None:
        raise NotFound(f"no routing rule {rule_id} in force", field="rule_id")
    session.execute(update(RoutingRule).where(RoutingRule.id == rule_id).values(retired_at=now))
    session.info.pop(_MEMO, None)
    audit.record(session, [audit.EventIn(now, actor, "routing.retire", "routing_rule", str(rule_id),
                                         _rule_dict(rule), {"retired_at": now.isoformat()})])


def _rule_dict(r: RoutingRule) -> dict[str, object]:
    return {
        "priority": r.priority, "category_code": r.category_code, "category_group": r.category_group,
        "jurisdiction_level": r.jurisdiction_level, "jurisdiction_code": r.jurisdiction_code,
        "body_code": r.body_code, "note": r.note,
    }


def list_bodies(session: Session) -> list[Body]:
    """Every body, retired ones included."""
    return list(session.scalars(select(Body).order_by(Body.id)))


def list_categories(session: Session) -> list[Category]:
    """Every category."""
    return list(session.scalars(select(Category).order_by(Category.id)))


def list_rules(session: Session, *, include_retired: bool = False) -> list[RoutingRule]:
    """Rules in the order they are tried (priority, then id)."""
    stmt = select(RoutingRule).order_by(RoutingRule.priority, RoutingRule.id)
    if not include_retired:
        stmt = stmt.where(RoutingRule.retired_at.is_(None))
    return list(session.scalars(stmt))
