"""Tables of online monitoring: readings, quarantine, per-point link state, exceedance runs
and episodes. (The points themselves are :class:`layers.models.MonitoringPoint`.)

Readings are keyed by (MN, CN, DataTime, pollutant): a device that retransmits because it
missed our answer, or replays history, is stored once. Quarantine keeps the raw bytes of
everything the receiver could not accept, with the reason, so nothing is lost silently.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from layers.models import Base, utcnow

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key for readings.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class MonitoringReading(Base):
    """One factor of one upload: the stored value, its flag and all fields as sent."""

    __tablename__ = "monitoring_readings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    mn: Mapped[str] = mapped_column(String(40))
    cn: Mapped[str] = mapped_column(String(8))
    data_time: Mapped[datetime]
    pollutant: Mapped[str] = mapped_column(String(40))
    # The headline value: Rtd for real-time data, Avg for period data (Zs* stay in ``fields``).
    value: Mapped[float | None] = mapped_column(Float, default=None)
    fields: Mapped[dict[str, Any]] = mapped_column(default=dict)
    flag: Mapped[str | None] = mapped_column(String(4), default=None)
    received_at: Mapped[datetime]
    # received_at - DataTime in seconds; for period data about one period is normal.
    skew_s: Mapped[float | None] = mapped_column(Float, default=None)

    __table_args__ = (
        # The storage key (ON CONFLICT finds it by its columns, in any order). This column order
        # also serves history and latest values (MN, pollutant, DataTime range), so no second
        # index has to be maintained for every stored reading (migration 0005).
        UniqueConstraint("mn", "pollutant", "data_time", "cn", name="uq_monitoring_readings_key"),
    )


class MonitoringQuarantine(Base):
    """Bytes the receiver could not accept (bad CRC, unknown MN, junk ...), kept verbatim."""

    __tablename__ = "monitoring_quarantine"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(index=True)
    peer: Mapped[str] = mapped_column(String(80), default="")
    reason: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(40), index=True)  # the reason's code, e.g. bad_crc
    mn: Mapped[str | None] = mapped_column(String(40), default=None)
    size: Mapped[int] = mapped_column(Integer, default=0)
    raw: Mapped[bytes] = mapped_column(LargeBinary)


class MonitoringLink(Base):
    """What the receiver last heard from a point: times, clock skew, peer, counts.

    Updated for every point of every batch; on PostgreSQL the table has fillfactor 70 so those
    are HOT updates (migration 0005; likewise ``monitoring_runs``).
    """

    __tablename__ = "monitoring_links"

    mn: Mapped[str] = mapped_column(String(40), primary_key=True)
    last_received_at: Mapped[datetime]
    last_data_time: Mapped[datetime | None] = mapped_column(default=None)
    last_skew_s: Mapped[float | None] = mapped_column(Float, default=None)
    last_peer: Mapped[str] = mapped_column(String(80), default="")
    packets: Mapped[int] = mapped_column(Integer, default=0)
    readings: Mapped[int] = mapped_column(Integer, default=0)


class ExceedanceRun(Base):
    """The exceedance engine's state for one point, pollutant and data type (CN).

    Persisted so a restart or another receiver process continues the count where it stopped.
    """

    __tablename__ = "monitoring_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    mn: Mapped[str] = mapped_column(String(40))
    pollutant: Mapped[str] = mapped_column(String(40))
    cn: Mapped[str] = mapped_column(String(8))
    over: Mapped[int] = mapped_column(Integer, default=0)
    under: Mapped[int] = mapped_column(Integer, default=0)
    run_start: Mapped[datetime | None] = mapped_column(default=None)
    run_max: Mapped[float | None] = mapped_column(Float, default=None)
    last_data_time: Mapped[datetime | None] = mapped_column(default=None)
    episode_id: Mapped[int | None] = mapped_column(ForeignKey("monitoring_episodes.id"), default=None)

    __table_args__ = (UniqueConstraint("mn", "pollutant", "cn", name="uq_monitoring_runs_key"),)


class MonitoringEpisode(Base):
    """An exceedance or a data-missing episode, and the one lead it raised."""

    __tablename__ = "monitoring_episodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    mn: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(16))  # exceedance | data_missing
    pollutant: Mapped[str] = mapped_column(String(40), default="")
    cn: Mapped[str] = mapped_column(String(8), default="")
    limit_value: Mapped[float | None] = mapped_column(Float, default=None)
    unit: Mapped[str] = mapped_column(String(20), default="")
    status: Mapped[str] = mapped_column(String(8), default="open")  # open | closed
    started_at: Mapped[datetime]
    last_at: Mapped[datetime]
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    max_value: Mapped[float | None] = mapped_column(Float, default=None)
    count: Mapped[int] = mapped_column(Integer, default=0)
    lead_id: Mapped[int | None] = mapped_column(ForeignKey("leads.id"), default=None, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        # At most one open episode per point, kind, pollutant and CN: the database refuses a
        # second one even if two receivers race, so no duplicate lead can follow.
        Index(
            "uq_monitoring_episodes_one_open",
            "mn", "kind", "pollutant", "cn",
            unique=True,
            sqlite_where=text("status = 'open'"),
            postgresql_where=text("status = 'open'"),
        ),
        Index("ix_monitoring_episodes_started", "started_at"),
    )
