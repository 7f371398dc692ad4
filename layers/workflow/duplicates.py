"""Duplicates and rebounds at intake, merged children's feedback, and the dispatcher's queue.

At intake (:func:`find_at_intake`, one candidate query per batch through the spatial index,
then :func:`store_at_intake`):

* **Duplicate proposal** (重复): a new lead of the same category within
  ``duplicate_distance_m`` of an *open* lead reported within ``duplicate_window_hours`` of it is
  proposed as a duplicate of that lead (the nearest; ties: the oldest). The proposal is stored on
  the new lead's case (``duplicate_of_id``, ``duplicate_m``); nothing changes state. The dispatcher
  confirms with the ordinary ``merge`` transition (its audit event records the merge) or dismisses
  the proposal (:func:`dismiss_duplicate`, audited).
* **Rebound** (反弹): a new lead of the same category within ``rebound_distance_m`` of a lead
  *closed* within ``rebound_days`` before the new report is linked to that closure
  (``rebound_of_id``, ``rebound_m`` on the new case) and counts against it: the closed case's
  ``rebound_count`` goes up, in the same unit of work, with an audit event on the earlier lead.
  重复投诉率 (repeat complaints) is then closed cases with ``rebound_count > 0`` / closed cases,
  and the ``rebounds`` oversight list names the closures that rebounded (or were reopened).

Both backends answer through the spatial index on ``leads.geom``: PostGIS with ``&&`` on a degree
box that surely holds the circle plus ``ST_DWithin`` on geography; SpatiaLite through the R*Tree
``idx_leads_geom`` with the same box. Distances are then computed exactly in Python (WGS84
geodesic, :func:`geo.crs.geodesic_distance_m`) so both backends decide alike.

Merging keeps each complainant's feedback obligation: a merged child's case gets
``feedback_owed``; when its parent closes, a ``feedback`` clock starts on the child (the parent's
result must still be told to the child's complainant) and the dispatcher is notified. The child's
own ``feedback`` action (allowed from ``merged``) discharges it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import numpy as np
from sqlalchemy import (
    Integer,
    Table,
    bindparam,
    func,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, aliased

from geo import crs as gcrs
from layers import audit
from layers.errors import Conflict, Invalid
from layers.models import Lead
from layers.nearby import search_box
from layers.settings import Settings
from layers.users import Principal, lead_scope_clause
from layers.workflow.states import OPEN_STATES, State
from layers.workflow.store import WfCase, WfClock

CASES_T = cast(Table, WfCase.__table__)
_OPEN = sorted(s.value for s in OPEN_STATES)
CHUNK = 2000


@dataclass(frozen=True)
class DuplicatePolicy:
    """Distances and time windows of duplicate proposals and rebound flags."""

    duplicate_distance_m: float = 100.0
    duplicate_window_hours: float = 72.0
    rebound_distance_m: float = 100.0
    rebound_days: float = 90.0

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> DuplicatePolicy:
        """The policy configured by ``LEADGRID_DUPLICATE_*`` / ``LEADGRID_REBOUND_*``.

        Parameters
        ----------
        settings
            Settings to read (default: from the environment).

        Returns
        -------
        DuplicatePolicy
        """
        if settings is None:
            # Intake asks once per batch: reading the settings costs milliseconds, so the policy
            # is kept until one of its variables changes.
            key = tuple(os.environ.get(v) for v in _POLICY_ENV)
            hit = _POLICY_CACHE.get(key)
            if hit is None:
                hit = _POLICY_CACHE[key] = cls.from_settings(Settings())
            return hit
        s = settings
        return cls(s.duplicate_distance_m, s.duplicate_window_hours, s.rebound_distance_m,
                   s.rebound_days)


_POLICY_ENV = ("LEADGRID_DUPLICATE_DISTANCE_M", "LEADGRID_DUPLICATE_WINDOW_HOURS",
               "LEADGRID_REBOUND_DISTANCE_M", "LEADGRID_REBOUND_DAYS")
_POLICY_CACHE: dict[tuple[str | None, ...], DuplicatePolicy] = {}


@dataclass(frozen=True)
class _Candidate:
    new_id: int
    old_id: int
    status: str
    closed_at: datetime | None
    x: float
    y: float


@dataclass(frozen=True)
class IntakeFlags:
    """What :func:`find_at_intake` found: (new lead id, earlier lead id, metres) pairs."""

    duplicates: list[tuple[int, int, float]]
    rebounds: list[tuple[int, int, float]]


def find_at_intake(session: Session, lead_ids: Sequence[int], *,
                   policy: DuplicatePolicy | None = None) -> IntakeFlags:
    """The duplicates and rebounds of leads just taken in, found but not yet stored (reads only).

    Intake runs this before it opens the leads' cases: opening a case updates the KPI rollup rows
    that every concurrent intake also updates, and those row locks are held until the commit, so
    the candidate query (the batch's slowest read) must not run while they are held.

    Parameters
    ----------
    session
        The intake's unit of work (the new leads are already inserted).
    lead_ids
        Ids of the new leads.
    policy
        Distances and windows (default: from the settings).

    Returns
    -------
    IntakeFlags
        The duplicate proposals and rebound links to store.
    """
    if not lead_ids:
        return IntakeFlags([], [])
    pol = policy or DuplicatePolicy.from_settings()
    radius = max(pol.duplicate_distance_m, pol.rebound_distance_m)
    dup_win = timedelta(hours=pol.duplicate_window_hours)
    reb_win = timedelta(days=pol.rebound_days)
    backend = session.get_bind().dialect.name
    ids = sorted(set(int(i) for i in lead_ids))
    new_rows: list[Any] = []
    for start in range(0, len(ids), CHUNK):
        new_rows += session.execute(
            select(Lead.id, Lead.category_code, Lead.reported_at,
                   func.ST_X(Lead.geom).label("x"), func.ST_Y(Lead.geom).label("y"))
            .where(Lead.id.in_(ids[start:start + CHUNK]), Lead.geom.is_not(None))
        ).all()
    if not new_rows:
        return IntakeFlags([], [])
    found: list[Any] = []
    for start in range(0, len(new_rows), 1000):  # 10 parameters per lead: stay far below limits
        found += _candidates(session, backend, new_rows[start:start + 1000], radius, dup_win,
                             reb_win)
    new_at = {r.id: r for r in new_rows}
    dup_best: dict[int, tuple[float, int]] = {}
    reb_best: dict[int, tuple[float, float, int]] = {}
    if found:
        n = np.array([new_at[f.new_id].x for f in found]), np.array([new_at[f.new_id].y for f in found])
        d = np.atleast_1d(gcrs.geodesic_distance_m(n[0], n[1], np.array([f.x for f in found]),
                                                   np.array([f.y for f in found])))
        for f, dist in zip(found, d, strict=True):
            m = round(float(dist), 1)
            if f.status in _OPEN and m <= pol.duplicate_distance_m and f.old_id < f.new_id:
                best = dup_best.get(f.new_id)
                if best is None or (m, f.old_id) < best:
                    dup_best[f.new_id] = (m, f.old_id)
            elif f.status == State.CLOSED.value and m <= pol.rebound_distance_m:
                # The latest closure wins (it is the one the new complaint contradicts).
                key = (-f.closed_at.timestamp(), m, f.old_id)
                rb = reb_best.get(f.new_id)
                if rb is None or key < rb:
                    reb_best[f.new_id] = key
    dups = [(nid, old, m) for nid, (m, old) in sorted(dup_best.items())]
    rebs = [(nid, old, m) for nid, (_, m, old) in sorted(reb_best.items())]
    return IntakeFlags(dups, rebs)


def store_at_intake(session: Session, flags: IntakeFlags, *, now: datetime,
                    policy: DuplicatePolicy | None = None, actor: str = "system") -> None:
    """Store what :func:`find_at_intake` found on the cases (which must be open by now).

    Parameters
    ----------
    session
        The intake's unit of work.
    flags
        The duplicates and rebounds found.
    now
        Intake time (recorded on the audit events of rebounded closures).
    policy
        Distances and windows (named in the audit events' reasons).
    actor
        Recorded on the audit events.
    """
    pol = policy or DuplicatePolicy.from_settings()
    dups, rebs = flags.duplicates, flags.rebounds
    if dups:
        session.execute(
            update(CASES_T).where(CASES_T.c.lead_id == bindparam("b_id"))
            .values(duplicate_of_id=bindparam("b_of"), duplicate_m=bindparam("b_m")),
            [{"b_id": a, "b_of": b, "b_m": m} for a, b, m in dups])
    if rebs:
        session.execute(
            update(CASES_T).where(CASES_T.c.lead_id == bindparam("b_id"))
            .values(rebound_of_id=bindparam("b_of"), rebound_m=bindparam("b_m")),
            [{"b_id": a, "b_of": b, "b_m": m} for a, b, m in rebs])
        against: dict[int, list[int]] = {}
        for nid, old, _ in rebs:
            against.setdefault(old, []).append(nid)
        session.execute(
            update(CASES_T).where(CASES_T.c.lead_id == bindparam("b_id"))
            .values(rebound_count=CASES_T.c.rebound_count + bindparam("b_n", type_=Integer)),
            [{"b_id": old, "b_n": len(news)} for old, news in sorted(against.items())])
        audit.record(session, [audit.EventIn(
            at=now, actor=actor, action="lead.rebound", entity="lead", entity_id=str(old),
            before={}, after={"rebound_leads": news},
            reason=f"same category within {pol.rebound_distance_m:g} m, "
                   f"{pol.rebound_days:g} days after closure",
        ) for old, news in sorted(against.items())])


_PG_CANDIDATES = text("""
    SELECT n.nid AS new_id, o.id AS old_id, o.status, o.closed_at,
           ST_X(o.geom) AS x, ST_Y(o.geom) AS y
    FROM unnest(CAST(:nid AS integer[]), CAST(:cat AS text[]),
                CAST(:dlo AS timestamptz[]), CAST(:dhi AS timestamptz[]),
                CAST(:rlo AS timestamptz[]), CAST(:rhi AS timestamptz[]),
                CAST(:minx AS float8[]), CAST(:miny AS float8[]),
                CAST(:maxx AS float8[]), CAST(:maxy AS float8[]),
                CAST(:x AS float8[]), CAST(:y AS float8[]))
         AS n(nid, cat, dlo, dhi, rlo, rhi, minx, miny, maxx, maxy, x, y)
    JOIN leads AS o ON o.category_code = n.cat AND o.id <> n.nid
    WHERE o.geom && ST_MakeEnvelope(n.minx, n.miny, n.maxx, n.maxy, 4326)
      AND ST_DWithin(geography(o.geom),
                     geography(ST_SetSRID(ST_MakePoint(n.x, n.y), 4326)),
                     :radius)
      AND ((o.status = ANY(CAST(:open AS text[])) AND o.reported_at BETWEEN n.dlo AND n.dhi)
           OR (o.status = :closed AND o.closed_at BETWEEN n.rlo AND n.rhi))
""")
# One R*Tree box query per new lead, as a correlated scalar subquery so that the box drives it
# (as a join, SQLite's planner preferred scanning every open lead of the category per new lead).
_SQLITE_BOXED = text("""
    SELECT json_extract(j.value, '$[0]') AS nid,
           (SELECT group_concat(r.pkid) FROM idx_leads_geom AS r
            WHERE r.xmax >= json_extract(j.value, '$[1]') AND r.xmin <= json_extract(j.value, '$[3]')
              AND r.ymax >= json_extract(j.value, '$[2]') AND r.ymin <= json_extract(j.value, '$[4]')) AS ids
    FROM json_each(:batch) AS j
""")


def _candidates(session: Session, backend: str, batch: Sequence[Any], radius: float,
                dup_win: timedelta, reb_win: timedelta) -> list[Any]:
    """Open or recently closed leads of the same category near each new lead (index-backed).

    The batch goes to the database as a fixed number of parameters (arrays on PostgreSQL, one
    JSON document on SQLite), so the statement is the same for every batch: a VALUES list of
    thousands of bound rows cost more to compile than the query cost to run.
    """
    boxes = [(int(r.id), r.category_code, r.reported_at - dup_win, r.reported_at + dup_win,
              r.reported_at - reb_win, r.reported_at, *search_box(r.x, r.y, radius), r.x, r.y)
             for r in batch]
    if backend == "postgresql":
        cols = list(zip(*boxes, strict=True))
        params: dict[str, Any] = dict(zip(
            ("nid", "cat", "dlo", "dhi", "rlo", "rhi", "minx", "miny", "maxx", "maxy", "x", "y"),
            (list(c) for c in cols), strict=True))
        params.update(radius=radius * 1.01, open=_OPEN, closed=State.CLOSED.value)
        # During a bulk import the statistics lag far behind the table (thousands of leads
        # inserted by this very transaction) and the planner would scan every lead per new lead;
        # the GiST index is always the right path for a 100 m box.
        session.execute(text("SET LOCAL enable_seqscan = off"))
        try:
            return list(session.execute(_PG_CANDIDATES, params).all())
        finally:
            session.execute(text("RESET enable_seqscan"))
    per_new = session.execute(_SQLITE_BOXED, {"batch": json.dumps([[b[0], *b[6:10]] for b in boxes])}).all()
    want: dict[int, list[int]] = {}
    for nid, ids in per_new:
        if ids:
            want[int(nid)] = [int(i) for i in str(ids).split(",") if int(i) != int(nid)]
    all_ids = sorted({i for ids in want.values() for i in ids})
    o = aliased(Lead, name="o")
    rows: dict[int, Any] = {}
    for start in range(0, len(all_ids), 1000):
        for got in session.execute(
            select(o.id, o.category_code, o.status, o.reported_at, o.closed_at,
                   func.ST_X(o.geom).label("x"), func.ST_Y(o.geom).label("y"))
            .where(o.id.in_(all_ids[start:start + 1000]), o.geom.is_not(None))
        ):
            rows[int(got.id)] = got
    by_new = {int(b[0]): b for b in boxes}
    out: list[Any] = []
    for nid, ids in want.items():
        _, cat, dlo, dhi, rlo, rhi, *_ = by_new[nid]
        for oid in ids:
            row = rows.get(oid)
            if row is None or row.category_code != cat:
                continue
            if (row.status in _OPEN and dlo <= row.reported_at <= dhi) or (
                    row.status == State.CLOSED.value and row.closed_at is not None and rlo <= row.closed_at <= rhi):
                out.append(_Candidate(nid, oid, row.status, row.closed_at, row.x, row.y))
    return out


# ------------------------------------------------------------------------- dispatcher's side


def dismiss_duplicate(session: Session, p: Principal, ref: str, *, now: datetime,
                      reason: str = "") -> dict[str, Any]:
    """Reject a duplicate proposal (the lead is not the same problem); audited.

    Parameters
    ----------
    session
        Unit of work.
    p
        The dispatcher (or admin) deciding; the lead must be in scope.
    ref
        Lead code or id.
    now
        Decision time.
    reason
        Why the proposal is wrong.

    Returns
    -------
    dict
        ``lead`` and the dismissed ``duplicate_of`` code.
    """
    if not ({"dispatcher", "admin"} & set(p.roles)):
        from layers.errors import Forbidden

        raise Forbidden("only a dispatcher or admin decides on duplicate proposals")
    lead = _load(session, p, ref)
    wf = session.get(WfCase, lead.id)
    if wf is None or wf.duplicate_of_id is None:
        raise Conflict(f"lead {lead.code} has no duplicate proposal", state=lead.status,
                       version=lead.row_version)
    other = session.scalar(select(Lead.code).where(Lead.id == wf.duplicate_of_id))
    before = {"duplicate_of": other, "duplicate_m": wf.duplicate_m}
    wf.duplicate_of_id = None
    wf.duplicate_m = None
    session.flush()
    audit.record(session, [audit.EventIn(
        at=now, actor=p.username, action="lead.duplicate_dismiss", entity="lead",
        entity_id=str(lead.id), before=before, after={"duplicate_of": None}, reason=reason)])
    return {"lead": lead.code, "dismissed": other}


def _load(session: Session, p: Principal, ref: str) -> Lead:
    from layers.leads import get_lead  # local: layers.leads calls this module at intake

    return get_lead(session, p, ref)


def lead_links(session: Session, p: Principal, ref: str) -> dict[str, Any]:
    """:func:`case_links` of lead ``ref`` within ``p``'s scope.

    Parameters
    ----------
    session
        Any session (read only).
    p
        The reader (out of scope reads as absent).
    ref
        Lead code or numeric id.

    Returns
    -------
    dict
        ``lead``, ``state`` and the links of :func:`case_links`.
    """
    lead = _load(session, p, ref)
    return {"lead": lead.code, "state": lead.status, **case_links(session, lead.id)}


def case_links(session: Session, lead_id: int) -> dict[str, Any]:
    """The duplicate/rebound/merge links of one case, with lead codes (for the lead API).

    Parameters
    ----------
    session
        Any session (read only).
    lead_id
        The lead.

    Returns
    -------
    dict
        ``duplicate_of``/``duplicate_m`` (proposal), ``rebound_of``/``rebound_m`` (the closure this
        lead rebounded), ``rebounds`` and ``rebound_count`` (later leads counted against this
        closure), ``feedback_owed`` and ``merged_children``; empty without a case row.
    """
    wf = session.get(WfCase, lead_id)
    if wf is None:
        return {}
    ids = [i for i in (wf.duplicate_of_id, wf.rebound_of_id) if i is not None]
    codes: dict[int, str] = {int(r.id): r.code for r in session.execute(
        select(Lead.id, Lead.code).where(Lead.id.in_(ids)))} if ids else {}
    rebounds = session.scalars(
        select(Lead.code).join(WfCase, WfCase.lead_id == Lead.id)
        .where(WfCase.rebound_of_id == lead_id).order_by(Lead.id)).all()
    children = session.execute(
        select(Lead.code, WfCase.feedback_owed, WfCase.feedback_at)
        .join(WfCase, WfCase.lead_id == Lead.id).where(Lead.parent_id == lead_id)
        .order_by(Lead.id)).all()
    return {
        "duplicate_of": codes.get(wf.duplicate_of_id) if wf.duplicate_of_id else None,
        "duplicate_m": wf.duplicate_m,
        "rebound_of": codes.get(wf.rebound_of_id) if wf.rebound_of_id else None,
        "rebound_m": wf.rebound_m,
        "rebounds": list(rebounds),
        "rebound_count": wf.rebound_count,
        "feedback_owed": wf.feedback_owed,
        "merged_children": [{"lead": c.code, "feedback_owed": c.feedback_owed,
                             "feedback_at": c.feedback_at} for c in children],
    }


QUEUE_KINDS = ("unrouted", "returned", "duplicates", "feedback_owed")


def dispatcher_queue(session: Session, p: Principal, *, kind: str | None = None,
                     limit: int = 200) -> dict[str, Any]:
    """What waits for a dispatcher in ``p``'s scope, by kind, oldest first.

    Parameters
    ----------
    session
        Any session (read only).
    p
        The reader (scope applies inside the queries).
    kind
        One of ``unrouted`` (received, not dispatched), ``returned`` (退单, to re-dispatch),
        ``duplicates`` (proposed duplicates to merge or dismiss), ``feedback_owed`` (merged
        children whose parent closed and whose complainant has not had feedback); all when
        ``None``.
    limit
        Most items listed per kind.

    Returns
    -------
    dict
        ``kind``, ``total`` and ``items`` of the kind asked for; without ``kind``, one such dict
        per kind, keyed by kind.
    """
    kinds = QUEUE_KINDS if kind is None else (kind,)
    for k in kinds:
        if k not in QUEUE_KINDS:
            raise Invalid("kind", k, f"one of {list(QUEUE_KINDS)}")
    parent = aliased(Lead, name="parent")
    dup = aliased(Lead, name="dup")
    out: dict[str, Any] = {}
    for k in kinds:
        cols: list[Any] = [Lead.code, Lead.status, Lead.category_code, Lead.county_code,
                           Lead.township_code, Lead.body_code, Lead.received_at, Lead.due_at]
        q: Any
        if k == "unrouted":
            q = select(*cols).where(Lead.status == State.RECEIVED.value)
        elif k == "returned":
            q = select(*cols).where(Lead.status == State.RETURNED.value)
        elif k == "duplicates":
            q = (select(*cols, dup.code.label("duplicate_of"), WfCase.duplicate_m)
                 .join(WfCase, WfCase.lead_id == Lead.id)
                 .join(dup, dup.id == WfCase.duplicate_of_id)
                 .where(WfCase.duplicate_of_id.is_not(None),
                        Lead.status.in_([State.RECEIVED.value, State.RETURNED.value,
                                         State.DISPATCHED.value, State.SIGNED.value])))
        else:
            q = (select(*cols, parent.code.label("parent"), parent.closed_at.label("parent_closed_at"))
                 .join(WfCase, WfCase.lead_id == Lead.id)
                 .join(parent, parent.id == Lead.parent_id)
                 .where(WfCase.feedback_owed, Lead.status == State.MERGED.value,
                        parent.status == State.CLOSED.value))
        q = q.where(lead_scope_clause(p))
        total = session.scalar(select(func.count()).select_from(q.subquery()))
        rows = session.execute(q.order_by(Lead.id).limit(limit)).all()
        out[k] = {"kind": k, "total": int(total or 0), "items": [r._asdict() for r in rows]}
    return out[kind] if kind is not None else out


# --------------------------------------------------------------------- merge and feedback hooks


def on_merge(session: Session, child: Lead, wf: WfCase) -> None:
    """A lead was merged: its complainant is still owed feedback, and the proposal is settled.

    Parameters
    ----------
    session
        The transition's unit of work.
    child
        The lead just merged.
    wf
        Its case row (changed in place).
    """
    wf.feedback_owed = wf.feedback_at is None
    wf.duplicate_of_id = None
    wf.duplicate_m = None


def children_owed(session: Session, parent_id: int) -> list[Lead]:
    """Merged descendants of ``parent_id`` (through merged chains) still owed feedback.

    Parameters
    ----------
    session
        Unit of work.
    parent_id
        The lead that closes.

    Returns
    -------
    list of Lead
        Children, grandchildren… in state ``merged`` with ``feedback_owed``.
    """
    out: list[Lead] = []
    frontier = [parent_id]
    seen = set(frontier)
    while frontier:
        kids = session.scalars(
            select(Lead).where(Lead.parent_id.in_(frontier), Lead.status == State.MERGED.value)
        ).all()
        frontier = [k.id for k in kids if k.id not in seen]
        seen.update(frontier)
        owed = set(session.scalars(select(WfCase.lead_id).where(
            WfCase.lead_id.in_([k.id for k in kids]), WfCase.feedback_owed)).all()) \
            if kids else set()
        out += [k for k in kids if k.id in owed]
    return out


def running_feedback_clock(session: Session, lead_id: int) -> WfClock | None:
    """The running ``feedback`` clock of a lead, if any.

    Parameters
    ----------
    session
        Unit of work.
    lead_id
        The lead.

    Returns
    -------
    WfClock or None
    """
    return session.scalar(select(WfClock).where(
        WfClock.lead_id == lead_id, WfClock.node == "feedback", WfClock.stopped_at.is_(None)))


__all__ = [
    "QUEUE_KINDS",
    "DuplicatePolicy",
    "IntakeFlags",
    "case_links",
    "children_owed",
    "dismiss_duplicate",
    "dispatcher_queue",
    "find_at_intake",
    "lead_links",
    "on_merge",
    "running_feedback_clock",
    "store_at_intake",
]
