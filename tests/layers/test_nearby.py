"""Cases near me: real metric radius, scope inside the query, k-nearest, and the spatial index."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import text, update

from geo import crs as gcrs
from layers import leads, nearby
from layers.errors import Invalid
from layers.models import Lead
from layers.users import SYSTEM, Principal
from tests.conftest import NOW, Db

CENTRE = (117.05, 34.02)  # county 320001, township 320001001
FIELD_A = Principal("field_a", frozenset({"field"}), frozenset({"320001"}))


def _file(db: Db, points: list[tuple[str, float, float]]) -> dict[str, int]:
    items = [leads.LeadIn(channel="12345", external_id=ext, category="catering_fumes",
                          reported_at=NOW - timedelta(hours=1), lon=x, lat=y) for ext, x, y in points]
    with db.uow() as s:
        out = leads.submit(s, items, actor="test", now=NOW)
    return {ext: o.lead_id for (ext, _, _), o in zip(points, out, strict=True)}


def _ring(n: int, radius_m: float, seed: int = 0) -> list[tuple[float, float]]:
    """``n`` points at random bearings, exactly ``radius_m`` (geodesic) from CENTRE."""
    rng = np.random.default_rng(seed)
    az = rng.uniform(0, 360, n)
    lon, lat, _ = gcrs._GEOD.fwd(np.full(n, CENTRE[0]), np.full(n, CENTRE[1]), az, np.full(n, radius_m))
    return list(zip(lon.tolist(), lat.tolist(), strict=True))


def test_radius_is_metric_not_degrees(seeded: Db) -> None:
    # East and north at 990 m are in, at 1010 m out: a degree box or a degree radius would
    # get one of the axes wrong (a degree of longitude is ~0.83 of one of latitude here).
    pts = []
    for tag, d in (("in", 990.0), ("out", 1010.0)):
        for i, (x, y) in enumerate(_ring(8, d, seed=1)):
            pts.append((f"{tag}{i}", x, y))
    _file(seeded, pts)
    with seeded.uow() as s:
        hits = nearby.nearby(s, SYSTEM, *CENTRE, radius_m=1000.0, limit=500)
    assert len(hits) == 8
    assert all(989.9 < h.distance_m < 990.1 for h in hits)
    assert [h.distance_m for h in hits] == sorted(h.distance_m for h in hits)


def test_scope_is_applied_inside_the_query(seeded: Db) -> None:
    ids = _file(seeded, [("a", 117.05, 34.021), ("b", 117.101, 34.02)])  # b: county 320002, ~4.7 km away
    with seeded.uow() as s:
        mine = nearby.nearby(s, FIELD_A, *CENTRE, radius_m=10_000)
        everyone = nearby.nearby(s, SYSTEM, *CENTRE, radius_m=10_000)
    assert [h.id for h in mine] == [ids["a"]]
    assert {h.id for h in everyone} == {ids["a"], ids["b"]}


def test_k_nearest_without_radius_matches_brute_force(seeded: Db) -> None:
    rng = np.random.default_rng(7)
    # Spread in longitude more than latitude so degree order and metric order disagree.
    xs = rng.uniform(117.00, 117.20, 300)
    ys = rng.uniform(34.00, 34.10, 300)
    _file(seeded, [(f"p{i}", float(x), float(y)) for i, (x, y) in enumerate(zip(xs, ys, strict=True))])
    d = gcrs.geodesic_distance_m(CENTRE[0], CENTRE[1], xs, ys)
    want = np.sort(d)[:25]
    with seeded.uow() as s:
        hits = nearby.nearby(s, SYSTEM, *CENTRE, limit=25)
    assert np.allclose([h.distance_m for h in hits], want, atol=0.01)
    with seeded.uow() as s:
        few = nearby.nearby(s, SYSTEM, *CENTRE, radius_m=300, limit=500)
    assert len(few) == int((d <= 300).sum())


def test_dense_circle_ranked_in_the_database_equals_brute_force(seeded: Db) -> None:
    """More leads in the circle than the limit: PostGIS ranks and cuts, the answer must not change."""
    rng = np.random.default_rng(11)
    az, r = rng.uniform(0, 360, 240), rng.uniform(0, 900, 240)
    lon, lat, _ = gcrs._GEOD.fwd(np.full(240, CENTRE[0]), np.full(240, CENTRE[1]), az, r)
    ids = _file(seeded, [(f"d{i}", float(x), float(y)) for i, (x, y) in enumerate(zip(lon, lat, strict=True))])
    due = {ids[f"d{i}"]: NOW + timedelta(hours=int(h)) for i, h in enumerate(rng.integers(1, 6, 240)) if i % 3}
    with seeded.uow() as s:
        for lead_id, at in due.items():
            s.execute(update(Lead).where(Lead.id == lead_id).values(due_at=at))
    d = gcrs.geodesic_distance_m(CENTRE[0], CENTRE[1], lon, lat)
    by_id = {ids[f"d{i}"]: float(d[i]) for i in range(240)}
    nearest = sorted(by_id, key=lambda i: (by_id[i], i))
    soonest = sorted(by_id, key=lambda i: (i not in due, due.get(i, NOW), by_id[i], i))
    with seeded.uow() as s:
        assert [h.id for h in nearby.nearby(s, SYSTEM, *CENTRE, radius_m=1000, limit=30)] == nearest[:30]
        got = [h.id for h in nearby.nearby(s, SYSTEM, *CENTRE, radius_m=1000, limit=30, sort="deadline")]
        assert got == soonest[:30]
        assert [h.id for h in nearby.nearby(s, SYSTEM, *CENTRE, limit=30)] == nearest[:30]


def test_sort_by_deadline_and_status_filter(seeded: Db) -> None:
    ids = _file(seeded, [("near", 117.05, 34.0205), ("far", 117.05, 34.025), ("none", 117.05, 34.021)])
    with seeded.uow() as s:
        s.execute(update(Lead).where(Lead.id == ids["far"]).values(due_at=NOW + timedelta(hours=2)))
        s.execute(update(Lead).where(Lead.id == ids["near"]).values(due_at=NOW + timedelta(days=3),
                                                                      status="signed"))
    with seeded.uow() as s:
        by_deadline = nearby.nearby(s, SYSTEM, *CENTRE, radius_m=2000, sort="deadline")
        signed = nearby.nearby(s, SYSTEM, *CENTRE, radius_m=2000, status=["signed"])
    assert [h.id for h in by_deadline] == [ids["far"], ids["near"], ids["none"]]
    assert [h.id for h in signed] == [ids["near"]]


def test_gcj02_input_is_converted(seeded: Db) -> None:
    ids = _file(seeded, [("x", *CENTRE)])
    gx, gy = gcrs.wgs84_to_gcj02(*CENTRE)  # ~500 m off in Xuzhou
    with seeded.uow() as s:
        assert [h.id for h in nearby.nearby(s, SYSTEM, gx, gy, datum="gcj02", radius_m=5)] == [ids["x"]]
        assert nearby.nearby(s, SYSTEM, gx, gy, datum="wgs84", radius_m=5) == []


@pytest.mark.parametrize(("kw", "field"), [
    ({"lon": float("nan")}, "lon"), ({"lat": 999.0}, "lat"), ({"lon": -999.0}, "lon"),
    ({"datum": "wgs72"}, "datum"), ({"radius_m": 0.0}, "radius_m"), ({"radius_m": 1e9}, "radius_m"),
    ({"limit": 0}, "limit"), ({"sort": "name"}, "sort"),
])
def test_bad_input_names_the_field(seeded: Db, kw: dict, field: str) -> None:
    args = {"lon": CENTRE[0], "lat": CENTRE[1], **kw}
    with seeded.uow() as s, pytest.raises(Invalid) as err:
        nearby.nearby(s, SYSTEM, args.pop("lon"), args.pop("lat"), **args)
    assert err.value.field == field


def test_the_spatial_index_answers(seeded: Db) -> None:
    _file(seeded, [("a", *CENTRE)])
    stmt = nearby.within_stmt(seeded.backend, FIELD_A, *CENTRE, 1000.0)
    with seeded.engine.connect() as c:
        compiled = stmt.compile(c, compile_kwargs={"literal_binds": True})
        if seeded.backend == "postgis":
            c.execute(text("SET enable_seqscan = off"))  # tiny table: make the planner show its index
            plan = "\n".join(r[0] for r in c.execute(text(f"EXPLAIN {compiled}")))
            assert "idx_leads_geom" in plan and "Seq Scan on leads" not in plan
        else:
            plan = "\n".join(str(r[-1]) for r in c.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
            assert "idx_leads_geom VIRTUAL TABLE INDEX" in plan
            assert "SCAN leads" not in plan
