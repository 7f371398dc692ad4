"""The spatial store on both backends: migrations, every model, spatial indexes, audit chain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from shapely.geometry import MultiPolygon, Point, box
from sqlalchemy import func, select, text, update

from layers import audit, migrate
from layers.models import (
    AuditEvent,
    Body,
    BoundaryVersion,
    Category,
    Dispatch,
    Jurisdiction,
    Lead,
    MonitoringPoint,
    RoutingRule,
    User,
)
from layers.shapes import from_shape, to_shape
from tests.conftest import NOW, Db


def test_migration_from_empty_and_back(db: Db) -> None:
    assert migrate.current_revision(db.engine) == migrate.head_revision()
    migrate.downgrade(db.engine, "base")
    assert migrate.current_revision(db.engine) is None
    assert migrate.upgrade(db.engine) == migrate.head_revision()
    assert migrate.upgrade(db.engine) == migrate.head_revision()  # idempotent


def test_spatial_indexes_exist(db: Db) -> None:
    with db.engine.connect() as c:
        if db.backend == "postgis":
            sql = "SELECT tablename FROM pg_indexes WHERE indexdef ILIKE '%USING gist%'"
            rows = c.execute(text(sql)).scalars()
        else:
            sql = "SELECT f_table_name FROM geometry_columns WHERE spatial_index_enabled = 1"
            rows = c.execute(text(sql)).scalars()
        assert {"jurisdictions", "leads", "monitoring_points"} <= set(rows)


def test_round_trip_of_every_model(db: Db) -> None:
    square = MultiPolygon([box(117.0, 34.0, 117.1, 34.1)])
    t = datetime(2026, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)
    with db.uow() as s:
        s.add(Body(code="EEB", name="生态环境局", name_en="EEB"))
        s.add(Category(code="odour", name="异味", group="air"))
        v = BoundaryVersion(layer="v1", datum="cgcs2000", created_at=t)
        s.add(v)
        s.flush()
        s.add(Jurisdiction(version_id=v.id, code="320001", name="甲县", level="county", geom=from_shape(square)))
        rule = RoutingRule(priority=1, category_code="odour", body_code="EEB", created_at=t)
        s.add(rule)
        s.flush()
        lead = Lead(code="L1", channel="12345", external_id="e1", category_code="odour", reported_at=t,
                    geom=from_shape(Point(117.05, 34.05)), assign_candidates=[{"code": "x", "distance_m": 1.5}],
                    boundary_version_id=v.id, routing_rule_id=rule.id, description="油烟<script>")
        s.add(lead)
        s.flush()
        s.add(Dispatch(lead_id=lead.id, at=t, method="inside", city_code="320000"))
        s.add(MonitoringPoint(mn="MN1", name="点", orig_lon=117.05, orig_lat=34.05, orig_datum="gcj02",
                              geom=from_shape(Point(117.05, 34.05)), limits={"a21026": {"limit": 50}}))
        s.add(User(username="u1", password_hash="h", roles=["leader"], scope_codes=["320001"]))
        audit.record(s, [audit.EventIn(t, "me", "x", "lead", "1", {}, {"when": t})])
    with db.uow() as s:
        j = s.scalar(select(Jurisdiction))
        assert to_shape(j.geom).equals(square)
        lead = s.scalar(select(Lead))
        assert lead.reported_at == t and lead.reported_at.tzinfo is not None
        assert to_shape(lead.geom).equals(Point(117.05, 34.05))
        assert lead.assign_candidates == [{"code": "x", "distance_m": 1.5}]
        assert lead.description == "油烟<script>"
        assert s.scalar(select(Dispatch.method)) == "inside"
        assert s.scalar(select(MonitoringPoint.limits)) == {"a21026": {"limit": 50}}
        assert s.scalar(select(User.scope_codes)) == ["320001"]
        assert s.scalar(select(BoundaryVersion.created_at)) == t
        assert s.scalar(select(AuditEvent.after)) == {"when": t.isoformat()}
        # The database itself agrees the point lies in the polygon (ST_Covers on both backends).
        covers = select(func.ST_Covers(Jurisdiction.geom, Lead.geom)).select_from(Jurisdiction).join(Lead, Lead.id > 0)
        assert s.scalar(covers) in (True, 1)


def test_naive_datetimes_are_refused(db: Db) -> None:
    with pytest.raises(Exception, match="naive datetime"), db.uow() as s:
        s.add(BoundaryVersion(layer="v", datum="wgs84", created_at=datetime(2026, 1, 1)))
        s.flush()


def test_one_active_version_enforced_by_database(db: Db) -> None:
    with pytest.raises(Exception), db.uow() as s:  # noqa: B017 - IntegrityError differs per driver
        s.add_all([BoundaryVersion(layer="a", datum="wgs84", status="active"),
                   BoundaryVersion(layer="b", datum="wgs84", status="active")])
        s.flush()


def test_audit_chain_detects_tampering(db: Db) -> None:
    with db.uow() as s:
        audit.record(s, [audit.EventIn(NOW + timedelta(minutes=i), "alice", "lead.sign", "lead", str(i),
                                       {"status": "dispatched"}, {"status": "signed"}) for i in range(5)])
    with db.uow() as s:
        assert audit.verify(s).ok and audit.verify(s).checked == 5
        third = s.scalar(select(AuditEvent.id).where(AuditEvent.seq == 3))
    with db.engine.begin() as c:  # a direct edit, as an insider with SQL access would make
        c.execute(update(AuditEvent).where(AuditEvent.id == third).values(actor="mallory"))
    with db.uow() as s:
        res = audit.verify(s)
    assert not res.ok and res.first_bad_id == third and "altered" in res.problem


def test_audit_detects_deleted_tail(db: Db) -> None:
    with db.uow() as s:
        audit.record(s, [audit.EventIn(NOW, "a", "x", "lead", str(i), {}, {}) for i in range(3)])
    with db.engine.begin() as c:
        c.execute(text("DELETE FROM audit_events WHERE seq = 3"))
    with db.uow() as s:
        res = audit.verify(s)
    assert not res.ok and "deleted" in res.problem


def test_database_covers_agrees_with_memory(seeded: Db) -> None:
    """10,000 random points: in-memory assignment equals the database's own ST_Covers."""
    from geo.assign import assign
    from layers.jurisdictions import INDEX_CACHE

    rng = np.random.default_rng(7)
    lon = rng.uniform(116.99, 117.21, 10_000).round(3)  # rounding puts many points on edges
    lat = rng.uniform(33.99, 34.11, 10_000).round(3)
    with seeded.uow() as s:
        index = INDEX_CACHE.get(s)
        mem = assign(index, lon, lat, tolerance_m=0.0, near_border_m=0.0)
        values = ",".join(f"({i},{float(x)!r},{float(y)!r})" for i, (x, y) in enumerate(zip(lon, lat, strict=True)))
        make = "ST_GeomFromText('POINT(' || x || ' ' || y || ')', 4326)"
        sql = text(f"""
            WITH p(i, x, y) AS (VALUES {values})
            SELECT p.i, j.code FROM p JOIN jurisdictions j
              ON j.level = 'township' AND ST_Covers(j.geom, {make})
        """)
        hits: dict[int, set[str]] = {}
        for i, code in s.execute(sql):
            hits.setdefault(int(i), set()).add(code)
    for i in range(len(lon)):
        got = mem.township_code.iloc[i]
        if i in hits:
            assert got in hits[i], (lon[i], lat[i], got, hits[i])
            assert (mem.method.iloc[i] == "border") == (len(hits[i]) > 1)
        else:
            assert got is None or mem.method.iloc[i] != "inside"
