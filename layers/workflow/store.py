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

The tamper-evident trail is the audit chain (:mod:`layers.audit`, entity ``lead``).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from geoalchemy2 import Geometry
from sqlalchemy import (
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from layers.models import SRID, Base, utcnow


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

    __table_args__ = (Index("ix_wf_cases_rebound_of_id", "rebound_of_id"),)


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
    "WfCalendarDay",
    "WfCase",
    "WfClock",
    "WfEvidence",
    "WfExtension",
    "WfNotice",
]
