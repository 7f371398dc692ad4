"""GeoAlchemy2 models: the data leadgrid keeps, identical on SpatiaLite and PostGIS.

Geometry is stored as lon/lat in EPSG:4326 (CGCS2000 is treated as equal). Every timestamp is
timezone-aware UTC; :class:`UTCDateTime` makes SQLite, which has no time zones, behave like
PostgreSQL's ``timestamptz``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from geoalchemy2 import Geometry
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

SRID = 4326

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given; leadgrid stores UTC")
        value = value.astimezone(UTC)
        # SQLite keeps text; drop the offset so lexical order is time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """The current time, aware, in UTC (default for ``created_at`` columns only)."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSONType,
        list[Any]: JSONType,
    }


class VersionStatus(StrEnum):
    staged = "staged"
    active = "active"
    retired = "retired"


class Level(StrEnum):
    city = "city"
    county = "county"
    township = "township"


class Role(StrEnum):
    admin = "admin"
    dispatcher = "dispatcher"
    leader = "leader"
    field = "field"
    gis = "gis"
    inspector = "inspector"


class AssignMethod(StrEnum):
    inside = "inside"
    border = "border"
    nearest = "nearest"
    by_address = "by_address"
    manual = "manual"
    unassigned = "unassigned"


class BoundaryVersion(Base):
    """One generation of a boundary layer (MapIt's *generation*): staged → active → retired."""

    __tablename__ = "boundary_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    layer: Mapped[str] = mapped_column(String(80), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=VersionStatus.staged.value)
    datum: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(Text, default="")
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(80), default="system")
    activated_at: Mapped[datetime | None] = mapped_column(default=None)
    activated_by: Mapped[str | None] = mapped_column(String(80), default=None)
    effective_from: Mapped[datetime | None] = mapped_column(default=None)
    effective_to: Mapped[datetime | None] = mapped_column(default=None)

    __table_args__ = (
        # At most one active version; enforced by the database, not by hope.
        Index(
            "uq_boundary_versions_one_active",
            "status",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
    )


class Jurisdiction(Base):
    """A city, county or township polygon of one boundary version."""

    __tablename__ = "jurisdictions"

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("boundary_versions.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(120))
    level: Mapped[str] = mapped_column(String(16))
    parent_code: Mapped[str | None] = mapped_column(String(20), default=None)
    area_km2: Mapped[float] = mapped_column(Float, default=0.0)
    synthetic: Mapped[bool] = mapped_column(Boolean, default=False)
    geom: Mapped[Any] = mapped_column(Geometry("MULTIPOLYGON", srid=SRID, spatial_index=True))

    __table_args__ = (
        UniqueConstraint("version_id", "code", name="uq_jurisdictions_version_code"),
        Index("ix_jurisdictions_version_level", "version_id", "level"),
    )


class Body(Base):
    """A responsible body (责任主体); kept when retired so old leads stay valid."""

    __tablename__ = "bodies"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    name_en: Mapped[str] = mapped_column(String(160), default="")
    kind: Mapped[str] = mapped_column(String(16), default="department")
    remit: Mapped[str] = mapped_column(Text, default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Category(Base):
    """A lead category (air / water / noise / solid / ecology / monitoring groups)."""

    __tablename__ = "categories"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    name_en: Mapped[str] = mapped_column(String(160), default="")
    group: Mapped[str] = mapped_column("group_code", String(20))
    urgency: Mapped[str] = mapped_column(String(16), default="normal")
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class RoutingRule(Base):
    """Category × jurisdiction → body, priority-ordered; first match wins.

    A rule is never edited in place: a change retires the old row (``retired_at``) and adds a
    new one, so every lead can name the exact rule that routed it.
    """

    __tablename__ = "routing_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    priority: Mapped[int] = mapped_column(Integer)
    category_code: Mapped[str | None] = mapped_column(String(40), default=None)
    category_group: Mapped[str | None] = mapped_column(String(20), default=None)
    jurisdiction_level: Mapped[str | None] = mapped_column(String(16), default=None)
    jurisdiction_code: Mapped[str | None] = mapped_column(String(20), default=None)
    body_code: Mapped[str] = mapped_column(ForeignKey("bodies.code"))
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(80), default="system")
    retired_at: Mapped[datetime | None] = mapped_column(default=None)


class Lead(Base):
    """A pollution lead (问题线索) with how it was located, assigned and routed."""

    __tablename__ = "leads"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    channel: Mapped[str] = mapped_column(String(20))
    external_id: Mapped[str] = mapped_column(String(120))
    category_code: Mapped[str] = mapped_column(ForeignKey("categories.code"))
    urgency: Mapped[str] = mapped_column(String(16), default="normal")
    description: Mapped[str] = mapped_column(Text, default="")
    address: Mapped[str] = mapped_column(Text, default="")
    complainant_name: Mapped[str | None] = mapped_column(String(120), default=None)
    complainant_phone: Mapped[str | None] = mapped_column(String(40), default=None)
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    reported_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    orig_lon: Mapped[float | None] = mapped_column(Float, default=None)
    orig_lat: Mapped[float | None] = mapped_column(Float, default=None)
    orig_datum: Mapped[str | None] = mapped_column(String(16), default=None)
    geom: Mapped[Any] = mapped_column(
        Geometry("POINT", srid=SRID, spatial_index=True), nullable=True, default=None
    )
    geocode_precision: Mapped[str | None] = mapped_column(String(16), default=None)
    geocode_confidence: Mapped[float | None] = mapped_column(Float, default=None)
    city_code: Mapped[str | None] = mapped_column(String(20), default=None, index=True)
    county_code: Mapped[str | None] = mapped_column(String(20), default=None, index=True)
    township_code: Mapped[str | None] = mapped_column(String(20), default=None, index=True)
    body_code: Mapped[str | None] = mapped_column(ForeignKey("bodies.code"), default=None, index=True)
    boundary_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("boundary_versions.id"), default=None
    )
    routing_rule_id: Mapped[int | None] = mapped_column(ForeignKey("routing_rules.id"), default=None)
    assign_method: Mapped[str] = mapped_column(String(16), default=AssignMethod.unassigned.value)
    assign_reason: Mapped[str] = mapped_column(Text, default="")
    assign_distance_m: Mapped[float | None] = mapped_column(Float, default=None)
    assign_candidates: Mapped[list[Any]] = mapped_column(default=list)
    review: Mapped[bool] = mapped_column(Boolean, default=False)
    review_reason: Mapped[str] = mapped_column(Text, default="")
    routing_fallback: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(24), default="received", index=True)
    due_at: Mapped[datetime | None] = mapped_column(default=None)
    closed_at: Mapped[datetime | None] = mapped_column(default=None)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("leads.id"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    row_version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": row_version}  # noqa: RUF012 - read by SQLAlchemy
    __table_args__ = (
        UniqueConstraint("channel", "external_id", name="uq_leads_channel_external_id"),
        Index("ix_leads_reported_at", "reported_at"),
    )


class Dispatch(Base):
    """Every assignment a lead has had, oldest first; the lead row holds the current one."""

    __tablename__ = "dispatches"

    id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[int] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(80), default="system")
    trigger: Mapped[str] = mapped_column(String(40), default="intake")
    boundary_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("boundary_versions.id"), default=None
    )
    routing_rule_id: Mapped[int | None] = mapped_column(ForeignKey("routing_rules.id"), default=None)
    city_code: Mapped[str | None] = mapped_column(String(20), default=None)
    county_code: Mapped[str | None] = mapped_column(String(20), default=None)
    township_code: Mapped[str | None] = mapped_column(String(20), default=None)
    body_code: Mapped[str | None] = mapped_column(String(40), default=None)
    method: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")


class MonitoringPoint(Base):
    """An online monitor (enterprise outlet, dust monitor, air station), located like a lead."""

    __tablename__ = "monitoring_points"

    id: Mapped[int] = mapped_column(primary_key=True)
    mn: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    enterprise: Mapped[str] = mapped_column(String(200), default="")
    kind: Mapped[str] = mapped_column(String(40), default="outlet")
    orig_lon: Mapped[float] = mapped_column(Float)
    orig_lat: Mapped[float] = mapped_column(Float)
    orig_datum: Mapped[str] = mapped_column(String(16))
    geom: Mapped[Any] = mapped_column(Geometry("POINT", srid=SRID, spatial_index=True))
    city_code: Mapped[str | None] = mapped_column(String(20), default=None)
    county_code: Mapped[str | None] = mapped_column(String(20), default=None)
    township_code: Mapped[str | None] = mapped_column(String(20), default=None)
    body_code: Mapped[str | None] = mapped_column(String(40), default=None)
    boundary_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("boundary_versions.id"), default=None
    )
    assign_method: Mapped[str] = mapped_column(String(16), default=AssignMethod.unassigned.value)
    limits: Mapped[dict[str, Any]] = mapped_column(default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    """A person with roles and a scope (jurisdiction codes and/or bodies; empty = whole city)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    display_name: Mapped[str] = mapped_column(String(120), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    roles: Mapped[list[Any]] = mapped_column(default=list)
    scope_codes: Mapped[list[Any]] = mapped_column(default=list)
    scope_bodies: Mapped[list[Any]] = mapped_column(default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditHead(Base):
    """The single row holding the chain's newest hash; updating it serialises writers."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    hash: Mapped[str] = mapped_column(String(64))


class AuditEvent(Base):
    """Append-only, hash-chained record of every change (see :mod:`layers.audit`)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(60))
    entity: Mapped[str] = mapped_column(String(40))
    entity_id: Mapped[str] = mapped_column(String(60))
    before: Mapped[dict[str, Any]] = mapped_column(default=dict)
    after: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reason: Mapped[str] = mapped_column(Text, default="")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)

    __table_args__ = (Index("ix_audit_events_entity", "entity", "entity_id"),)
