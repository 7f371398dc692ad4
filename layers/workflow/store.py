"""Tables of the case workflow (migration ``0002``): case state, node clocks, calendar, notices.

The lead row (:class:`layers.models.Lead`) keeps the state, the current body, the case-level due
time and the optimistic-lock ``row_version``; these tables hold the rest:

* :class:`WfCase` — one row per lead: assignee, extension use, satisfaction and the counters the
  KPI and oversight queries aggregate (returns, rework, bodies, reopenings), so those queries scan
  one narrow row per lead instead of re-reading the event trail.
* :class:`WfClock` — every node clock ever started (a node can run more than once: rework starts
  ``handle`` again). Running clocks have ``stopped_at IS NULL``; ``yellow_at``/``red_at``/
  ``urged_at``/``supervised_at`` record what escalation already did, so a pass is idempotent.
* :class:`WfCalendarDay` — the official calendar as data (holidays and swapped working days).
* :class:`WfNotice` — warnings, urgings, supervision, re-dispatch notices; ``dedup_key`` is unique,
  so concurrent escalation passes insert each notice once (``ON CONFLICT DO NOTHING``).
* :class:`WfEvidence` — rectification evidence (note, photo references, the handler's GPS point)
  and complainant feedback notes.
* :class:`WfExtension` — extension requests and their decisions (延期).
* :class:`WfKpiDaily` — the daily rollup of the KPI counters (trigger-maintained, migration 0004).
* :class:`WfNodeOtherBodyDaily` — the daily rollup of clocks that ran with another body than their
  case's (trigger-maintained, migration 0006).

The tamper-evident trail is the audit chain (:mod:`layers.audit`, entity ``lead``).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from geoalchemy2 import Geometry
from sqlalchemy import (
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from layers.models import SRID, Base, utcnow

#: Predicates of the oversight lists, the same text in the partial indexes and the queries.
OVERSIGHT_PREDICATES = {
    "returned": "return_count >= 2 OR body_changes >= 2",
    "rebounds": "reopen_count > 0 OR rebound_count > 0",
    "dissatisfied": "satisfaction = 'dissatisfied'",
    "extensions": "extensions_used > 0",
}


class WfCase(Base):
    """Workflow state of one lead that the lead row does not hold."""

    __tablename__ = "wf_cases"

    lead_id: Mapped[int] = mapped_column(
        ForeignKey("leads.id", ondelete="CASCADE"), primary_key=True
    )
    assignee_id: Mapped[str | None] = mapped_column(String(80), default=None)
    first_dispatched_at: Mapped[datetime | None] = mapped_column(default=None)
    first_signed_at: Mapped[datetime | None] = mapped_column(default=None)
    # The first sign node's due time: 及时签收率 judges the first signature only.
    first_sign_due_at: Mapped[datetime | None] = mapped_column(default=None)
    # Final due time of the latest ``conclude`` clock, extensions included (按期办结率).
    conclude_due_at: Mapped[datetime | None] = mapped_column(default=None)
    dispatch_count: Mapped[int] = mapped_column(Integer, default=0)
    return_count: Mapped[int] = mapped_column(Integer, default=0)
    body_changes: Mapped[int] = mapped_column(Integer, default=0)
    verify_count: Mapped[int] = mapped_column(Integer, default=0)
    verify_fail_count: Mapped[int] = mapped_column(Integer, default=0)
    extensions_used: Mapped[int] = mapped_column(Integer, default=0)
    extension_days_used: Mapped[int] = mapped_column(Integer, default=0)
    reopen_count: Mapped[int] = mapped_column(Integer, default=0)
    urged: Mapped[bool] = mapped_column(Boolean, default=False)
    supervised: Mapped[bool] = mapped_column(Boolean, default=False)
    satisfaction: Mapped[str | None] = mapped_column(String(24), default=None)
    feedback_at: Mapped[datetime | None] = mapped_column(default=None)
    return_visit_at: Mapped[datetime | None] = mapped_column(default=None)
    rebound_of_id: Mapped[int | None] = mapped_column(
        ForeignKey("leads.id", ondelete="SET NULL"), default=None
    )
    # Duplicates and rebounds at intake (migration 0004, :mod:`layers.workflow.duplicates`).
    rebound_m: Mapped[float | None] = mapped_column(Float, default=None)
    # Later leads flagged as rebounds of this (closed) case: counts against its closure.
    rebound_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    duplicate_of_id: Mapped[int | None] = mapped_column(
        ForeignKey("leads.id", ondelete="SET NULL"), default=None
    )
    duplicate_m: Mapped[float | None] = mapped_column(Float, default=None)
    # A merged child's complainant still needs their own feedback when the parent closes.
    feedback_owed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    # Copies of the lead columns the KPI and oversight queries filter and group on, kept equal to
    # the lead row by a database trigger (``trg_leads_wf_cases_copy``, migration 0004) whatever
    # writes the lead, and set by :func:`layers.workflow.service.open_cases` at intake. With them
    # the KPIs are one aggregate over this narrow table instead of a join with ``leads``.
    lead_status: Mapped[str | None] = mapped_column(String(24), default=None)
    lead_closed_at: Mapped[datetime | None] = mapped_column(default=None)
    lead_received_at: Mapped[datetime | None] = mapped_column(default=None)
    city_code: Mapped[str | None] = mapped_column(String(20), default=None)
    county_code: Mapped[str | None] = mapped_column(String(20), default=None)
    township_code: Mapped[str | None] = mapped_column(String(20), default=None)
    body_code: Mapped[str | None] = mapped_column(String(40), default=None)
    # Finished node clocks of this case that carry a body (count and total seconds per node), kept
    # by the trigger ``trg_wf_clocks_node_stats`` when a clock stops: time per node without
    # reading the clocks. Clocks without a body (intake before dispatch) are read directly.
    n_accept: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    s_accept: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    n_sign: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    s_sign: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    n_on_site: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    s_on_site: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    n_handle: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    s_handle: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    n_verify: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    s_verify: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    n_feedback: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    s_feedback: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    n_return_visit: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    s_return_visit: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    n_conclude: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    s_conclude: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))

    __table_args__ = (
        Index("ix_wf_cases_rebound_of_id", "rebound_of_id"),
        Index("ix_wf_cases_county_code", "county_code"),
        Index("ix_wf_cases_township_code", "township_code"),
        Index("ix_wf_cases_lead_received_at", "lead_received_at"),
        # What the KPIs read per case at query time ("now"-dependent): unsigned, open and late.
        Index(
            "ix_wf_cases_unsigned",
            "first_sign_due_at",
            sqlite_where=text("first_signed_at IS NULL"),
            postgresql_where=text("first_signed_at IS NULL"),
        ),
        Index(
            "ix_wf_cases_open_due",
            "conclude_due_at",
            sqlite_where=text("lead_status NOT IN ('closed', 'merged')"),
            postgresql_where=text("lead_status NOT IN ('closed', 'merged')"),
            postgresql_include=["body_code", "county_code", "township_code", "city_code",
                                "lead_received_at"],
        ),
        # Cases that moved between bodies: their returns and node times are read from the clocks.
        Index(
            "ix_wf_cases_body_changed",
            "lead_id",
            sqlite_where=text("body_changes > 0"),
            postgresql_where=text("body_changes > 0"),
            postgresql_include=["lead_status", "city_code", "county_code", "township_code",
                                "body_code", "lead_received_at"],
        ),
        # The oversight lists (再监督) each read a small part of the cases.
        *[Index(f"ix_wf_cases_ov_{name}", "lead_id", sqlite_where=text(cond),
                postgresql_where=text(cond),
                postgresql_include=["body_code", "county_code", "city_code", "township_code"])
          for name, cond in OVERSIGHT_PREDICATES.items()],
        Index(
            "ix_wf_cases_duplicate_of_id",
            "duplicate_of_id",
            sqlite_where=text("duplicate_of_id IS NOT NULL"),
            postgresql_where=text("duplicate_of_id IS NOT NULL"),
        ),
        Index(
            "ix_wf_cases_feedback_owed",
            "lead_id",
            sqlite_where=text("feedback_owed"),
            postgresql_where=text("feedback_owed"),
        ),
    )


#: Counters of :class:`WfKpiDaily` (sums of each case's contribution; see migration 0004).
KPI_COUNTERS = ("cases", "closed", "signed_ok", "signed", "closed_ok", "reworked", "verified",
                "extended", "dispatched", "satisfied", "answered", "repeated", "dispatches",
                "returns", "m_dispatches", "m_returns")
#: Nodes with per-case sums of finished clocks.
STAT_NODES = ("accept", "sign", "on_site", "handle", "verify", "feedback", "return_visit",
              "conclude")


class WfKpiDaily(Base):
    """Daily rollup of the KPI counters and node sums of ``wf_cases`` (maintained by triggers).

    One row per receipt day (UTC) × city × county × township × body (``''`` stands for none, so
    the key is unique on both backends). Each case contributes its time-independent KPI flags
    (merged cases nothing), its dispatches and returns, and its finished-node sums; ``m_*`` repeat
    the parts of cases that moved between bodies (``body_changes > 0``), whose by-body attribution
    is read from their clocks instead (dispatches and returns; the ``mn_*``/``ms_*`` node sums are
    no longer read: node times by body use :class:`WfNodeOtherBodyDaily`). Triggers on
    ``wf_cases`` (statement-level with transition tables on PostGIS, row-level on SpatiaLite) add
    each change's difference, so the KPIs over a million cases read a few thousand rows. What
    depends on "now" (unsigned or open and overdue) is read from the open cases.
    """

    __tablename__ = "wf_kpi_daily"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    city_code: Mapped[str] = mapped_column(String(20), primary_key=True)
    county_code: Mapped[str] = mapped_column(String(20), primary_key=True)
    township_code: Mapped[str] = mapped_column(String(20), primary_key=True)
    body_code: Mapped[str] = mapped_column(String(40), primary_key=True)


for _c in KPI_COUNTERS:
    setattr(WfKpiDaily, _c, mapped_column(_c, Integer, nullable=False, default=0,
                                          server_default=text("0")))
for _n in STAT_NODES:
    for _pre, _type in (("n", Integer), ("s", Float), ("mn", Integer), ("ms", Float)):
        setattr(WfKpiDaily, f"{_pre}_{_n}", mapped_column(f"{_pre}_{_n}", _type, nullable=False,
                                                          default=0, server_default=text("0")))


class WfNodeOtherBodyDaily(Base):
    """Daily rollup of the finished node clocks that ran with another body than their case's.

    One row per receipt day (UTC) × city × county × township × case body (``''`` for none) ×
    clock body × node: the count and total seconds of the case's finished clocks whose body
    differs from the case's current body (a case returned and re-dispatched, or moved by a
    direct write of the lead). Time per node by body takes these from the case's body (whose
    per-case sums hold them) and gives them to the clock's. Kept by triggers on ``wf_cases`` and
    ``wf_clocks`` (migration 0006).
    """

    __tablename__ = "wf_node_other_body_daily"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    city_code: Mapped[str] = mapped_column(String(20), primary_key=True)
    county_code: Mapped[str] = mapped_column(String(20), primary_key=True)
    township_code: Mapped[str] = mapped_column(String(20), primary_key=True)
    body_code: Mapped[str] = mapped_column(String(40), primary_key=True)
    clock_body_code: Mapped[str] = mapped_column(String(40), primary_key=True)
    node: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    s: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))


class WfClock(Base):
    """One run of one node clock on one lead."""

    __tablename__ = "wf_clocks"

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"))
    node: Mapped[str] = mapped_column(String(16))
    body_code: Mapped[str | None] = mapped_column(String(40), default=None)
    started_at: Mapped[datetime]
    due_at: Mapped[datetime | None] = mapped_column(default=None)
    base_due_at: Mapped[datetime | None] = mapped_column(default=None)
    provisional: Mapped[bool] = mapped_column(Boolean, default=False)
    rule_id: Mapped[str | None] = mapped_column(String(60), default=None)
    amount: Mapped[int | None] = mapped_column(Integer, default=None)
    unit: Mapped[str | None] = mapped_column(String(16), default=None)
    extensions: Mapped[int] = mapped_column(Integer, default=0)
    extension_days: Mapped[int] = mapped_column(Integer, default=0)
    # When the clock turns yellow (share of its time passed): stored so SQL can select it.
    warn_at: Mapped[datetime | None] = mapped_column(default=None)
    stopped_at: Mapped[datetime | None] = mapped_column(default=None)
    # The action that stopped it (``return`` attributes a return to the clock's body).
    stop_action: Mapped[str | None] = mapped_column(String(24), default=None)
    yellow_at: Mapped[datetime | None] = mapped_column(default=None)
    red_at: Mapped[datetime | None] = mapped_column(default=None)
    urged_at: Mapped[datetime | None] = mapped_column(default=None)
    supervised_at: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        Index("ix_wf_clocks_lead_node", "lead_id", "node"),
        # Escalation and the overdue query read running clocks by due time only.
        Index(
            "ix_wf_clocks_running_due",
            "due_at",
            sqlite_where=text("stopped_at IS NULL"),
            postgresql_where=text("stopped_at IS NULL"),
        ),
        Index(
            "ix_wf_clocks_running_warn",
            "warn_at",
            sqlite_where=text("stopped_at IS NULL AND yellow_at IS NULL"),
            postgresql_where=text("stopped_at IS NULL AND yellow_at IS NULL"),
        ),
        Index("ix_wf_clocks_body_node", "body_code", "node"),
        # Dispatches and returns of the cases that moved between bodies (index-only probes).
        Index(
            "ix_wf_clocks_sign_lead",
            "lead_id",
            sqlite_where=text("node IN ('sign', 'on_site')"),
            postgresql_where=text("node IN ('sign', 'on_site')"),
            postgresql_include=["body_code", "node", "stop_action"],
        ),
        Index(
            "ix_wf_clocks_stopped_no_body",
            "lead_id",
            sqlite_where=text("body_code IS NULL AND stopped_at IS NOT NULL"),
            postgresql_where=text("body_code IS NULL AND stopped_at IS NOT NULL"),
        ),
        Index(
            "ix_wf_clocks_provisional",
            "id",
            sqlite_where=text("provisional"),
            postgresql_where=text("provisional"),
        ),
    )


class WfCalendarDay(Base):
    """An exception to the Monday–Friday week: a day off or a swapped working day."""

    __tablename__ = "wf_calendar_days"

    id: Mapped[int] = mapped_column(primary_key=True)
    year: Mapped[int] = mapped_column(Integer, index=True)
    day: Mapped[date] = mapped_column(Date, unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(80), default="")
    source: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WfNotice(Base):
    """A notice to a body or jurisdiction: ``warning``, ``urge``, ``supervise``, ``redispatch``."""

    __tablename__ = "wf_notices"

    id: Mapped[int] = mapped_column(primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(120), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    level: Mapped[str | None] = mapped_column(String(16), default=None)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    clock_id: Mapped[int | None] = mapped_column(
        ForeignKey("wf_clocks.id", ondelete="CASCADE"), default=None
    )
    node: Mapped[str | None] = mapped_column(String(16), default=None)
    to_body: Mapped[str | None] = mapped_column(String(40), default=None, index=True)
    to_jurisdiction: Mapped[str | None] = mapped_column(String(20), default=None)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    read_at: Mapped[datetime | None] = mapped_column(default=None)


class WfEvidence(Base):
    """Rectification evidence or a feedback note attached to a transition."""

    __tablename__ = "wf_evidence"

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # rectify | feedback | annotation
    note: Mapped[str] = mapped_column(Text, default="")
    photo_refs: Mapped[list[Any]] = mapped_column(default=list)
    gps_lon: Mapped[float | None] = mapped_column(default=None)
    gps_lat: Mapped[float | None] = mapped_column(default=None)
    geom: Mapped[Any] = mapped_column(
        Geometry("POINT", srid=SRID, spatial_index=True), nullable=True, default=None
    )
    actor: Mapped[str] = mapped_column(String(80))
    at: Mapped[datetime]


class WfExtension(Base):
    """An extension request (延期) and its decision."""

    __tablename__ = "wf_extensions"

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    clock_id: Mapped[int | None] = mapped_column(
        ForeignKey("wf_clocks.id", ondelete="SET NULL"), default=None
    )
    node: Mapped[str] = mapped_column(String(16))
    body_code: Mapped[str | None] = mapped_column(String(40), default=None)
    days_requested: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[str] = mapped_column(String(80))
    requested_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|approved|refused
    days_granted: Mapped[int | None] = mapped_column(Integer, default=None)
    decided_by: Mapped[str | None] = mapped_column(String(80), default=None)
    decided_at: Mapped[datetime | None] = mapped_column(default=None)
    decision_reason: Mapped[str] = mapped_column(Text, default="")
    due_before: Mapped[datetime | None] = mapped_column(default=None)
    due_after: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        # At most one undecided request per lead, enforced by the database.
        Index(
            "uq_wf_extensions_one_pending",
            "lead_id",
            unique=True,
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
    )


__all__ = [
    "KPI_COUNTERS",
    "OVERSIGHT_PREDICATES",
    "STAT_NODES",
    "WfCalendarDay",
    "WfCase",
    "WfClock",
    "WfEvidence",
    "WfExtension",
    "WfKpiDaily",
    "WfNodeOtherBodyDaily",
    "WfNotice",
]
