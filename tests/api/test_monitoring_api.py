"""Monitoring end to end: the TCP receiver with DbSink over a real socket, and the HTTP API."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import func, select

from api.hj212_server import start_hj212_server
from layers import monitoring
from layers.hj212 import crc16_hj212
from layers.models import Lead
from layers.monitoring_store import MonitoringEpisode, MonitoringQuarantine, MonitoringReading
from tests.api.conftest import Api
from tests.conftest import Db
from tests.layers.test_monitoring import MN, T0, add_point, ingest, wire


def ack_of(raw: bytes) -> bytes:
    qn = raw.split(b"QN=", 1)[1].split(b";", 1)[0].decode()
    data = f"QN={qn};ST=91;CN=9014;PW=123456;MN={MN};Flag=4;CP=&&&&".encode()
    return b"##%04d%s%04X\r\n" % (len(data), data, crc16_hj212(data))


def count(db: Db, model: Any, *where: Any) -> int:
    with db.uow() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_tcp_server_with_db_sink_stores_quarantines_and_raises_one_lead(seeded: Db) -> None:
    add_point(seeded)
    good = [wire(i, v) for i, v in enumerate([120, 130, 140, 150])]
    bad_crc = wire(9, 50, ack=False)[:-6] + b"0000\r\n"
    unknown = wire(10, 50, mn="STRANGER01", ack=False)

    async def scenario() -> list[bytes]:
        async with monitoring.DbSink(seeded.sessions, batch_size=50, max_delay=0.05) as sink:
            server = await start_hj212_server("127.0.0.1", 0, sink)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            acks = []
            # Junk before the first packet, a retransmission, a bad CRC and an unknown device.
            writer.write(b"\x16\x03\x01junk" + good[0])
            acks.append(await asyncio.wait_for(reader.readuntil(b"\r\n"), 5))
            for raw in (good[0], *good[1:]):
                writer.write(raw)
                acks.append(await asyncio.wait_for(reader.readuntil(b"\r\n"), 5))
            writer.write(bad_crc + unknown)
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            # The connection's task stores what it read before the close; wait for it (bounded).
            for _ in range(200):
                if sink.totals.quarantined >= 3:
                    break
                await asyncio.sleep(0.05)
            server.close()
            await server.wait_closed()
            return acks

    acks = asyncio.run(scenario())
    assert acks == [ack_of(good[0]), ack_of(good[0]), *(ack_of(g) for g in good[1:])]
    assert count(seeded, MonitoringReading) == 8  # 4 minutes × 2 pollutants, retransmission once
    with seeded.uow() as s:
        kinds = sorted(q.kind for q in s.scalars(select(MonitoringQuarantine)))
        raws = {q.kind: q.raw for q in s.scalars(select(MonitoringQuarantine))}
    assert kinds == ["bad_crc", "junk", "unknown_mn"]
    assert raws["bad_crc"] == bad_crc and raws["unknown_mn"] == unknown
    assert count(seeded, Lead) == 1
    with seeded.uow() as s:
        ep = s.scalar(select(MonitoringEpisode))
        assert ep is not None and (ep.count, ep.max_value, ep.status) == (4, 150, "open")
        lead = s.get(Lead, ep.lead_id)
        assert lead is not None and lead.channel == "monitoring" and lead.township_code == "320001001"


def test_db_sink_batches_concurrent_packets(seeded: Db) -> None:
    add_point(seeded, limits={})
    from tests.layers.test_monitoring import packet

    async def scenario() -> monitoring.DbSink:
        sink = monitoring.DbSink(seeded.sessions, batch_size=40, max_delay=0.5)
        async with sink:
            at = T0 + timedelta(hours=1)
            await asyncio.gather(*(sink.accept(packet(wire(i, 10), at), at, "p") for i in range(100)))
        return sink

    sink = asyncio.run(scenario())
    assert count(seeded, MonitoringReading) == 200
    assert sink.batches == 3 and sink.totals.readings_new == 200  # 40 + 40 + 20, not 100 transactions


def test_points_api_scope_latest_readings_and_ranking(api: Api) -> None:
    add_point(api.db)
    add_point(api.db, "EAST01", lon=117.15, lat=34.02)
    ingest(api.db, [50, 60, 70])
    c = api.client
    r = c.get("/monitoring/points", headers=api.as_("admin"))
    assert r.status_code == 200 and sorted(p["mn"] for p in r.json()) == sorted([MN, "EAST01"])
    point = next(p for p in r.json() if p["mn"] == MN)
    assert point["township_code"] == "320001001" and point["body_code"] == "EEB"
    assert point["clock_skew_s"] == 65.0
    # Scoped users see only their county's points; others get 404, not 403.
    assert [p["mn"] for p in c.get("/monitoring/points", headers=api.as_("field_b")).json()] == ["EAST01"]
    assert c.get(f"/monitoring/points/{MN}/latest", headers=api.as_("field_b")).status_code == 404
    latest = c.get(f"/monitoring/points/{MN}/latest", headers=api.as_("field_a")).json()
    assert {(x["pollutant"], x["value"]) for x in latest} == {("a34001", 70.0), ("a34004", 30.0)}
    hist = c.get(f"/monitoring/points/{MN}/readings", headers=api.as_("field_a"),
                 params={"pollutant": "a34001", "since": "2026-06-01T00:01:00Z"}).json()
    assert [x["value"] for x in hist] == [60.0, 70.0]
    rank = c.get("/monitoring/ranking", params={"level": "township"}, headers=api.as_("leader"))
    assert rank.status_code == 200 and len(rank.json()) == 4
    assert c.get("/monitoring/ranking", params={"level": "galaxy"}, headers=api.as_("leader")).status_code == 422


def test_http_hj212_endpoint_and_quarantine_listing(api: Api) -> None:
    add_point(api.db)
    c = api.client
    body = wire(0, 120) + wire(1, 130) + wire(1, 130) + b"garbage" + wire(2, 140)[:-6] + b"0000\r\n"
    assert c.post("/hj212", content=body, headers=api.as_("dispatcher")).status_code == 403
    r = c.post("/hj212", content=body, headers=api.as_("admin"))
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["replies"]) == 3 and all("CN=9014" in x for x in out["replies"])
    assert (out["packets"], out["readings_new"], out["readings_duplicate"]) == (3, 4, 2)
    assert out["quarantined"] == 2
    q = c.get("/monitoring/quarantine", headers=api.as_("admin"))
    assert q.status_code == 200
    kinds = sorted(x["kind"] for x in q.json())
    assert kinds == ["bad_crc", "junk"]
    bad = next(x for x in q.json() if x["kind"] == "bad_crc")
    assert bytes.fromhex(bad["raw_hex"]).endswith(b"0000\r\n") and bad["mn"] == MN
    assert c.get("/monitoring/quarantine", headers=api.as_("leader")).status_code == 403


def test_db_sink_writes_what_queued_during_a_write_without_waiting_again(seeded: Db) -> None:
    """Group commit: the delay counts from an item's arrival, so items that queued while the
    previous batch was being written (and have waited long enough) go out at once."""
    add_point(seeded, limits={})
    from tests.layers.test_monitoring import packet

    gate = threading.Event()
    started: list[float] = []

    def sessions() -> Any:  # the real session factory; the first unit of work waits at the gate
        started.append(time.monotonic())
        if len(started) == 1:
            gate.wait(10)
        return seeded.sessions()

    async def scenario() -> float:
        sink = monitoring.DbSink(cast(Any, sessions), batch_size=1000, max_delay=1.0)
        async with sink:
            at = T0 + timedelta(hours=1)
            first = asyncio.ensure_future(sink.accept(packet(wire(0, 10), at), at, "p"))
            while not started:  # the first batch is being written (after max_delay)
                await asyncio.sleep(0.01)
            second = asyncio.ensure_future(sink.accept(packet(wire(1, 10), at), at, "p"))
            await asyncio.sleep(1.1)  # longer than max_delay, all of it during the first write
            released = time.monotonic()
            gate.set()
            await asyncio.gather(first, second)
        return released

    released = asyncio.run(scenario())
    assert len(started) == 2 and count(seeded, MonitoringReading) == 4
    # Written right after the first batch, not max_delay (1 s) later.
    assert started[1] - released < 0.5
