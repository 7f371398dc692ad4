"""Benchmark the HJ 212 receiver: N simulated data loggers over loopback TCP.

The server (``api.hj212_server`` with ``InMemorySink``) runs in its own process, as it would
in production; the devices run in one or more client processes. Each device keeps one TCP
connection, uploads minute data (CN=2051, Flag=5 so every packet is acknowledged with 9014)
and waits for the ack before sending the next, so throughput is bounded by the server's
latency, not by a client flooding a socket buffer. Every ``--bad-every``-th packet carries a
corrupted CRC (Flag=4, no ack expected): those must all land in quarantine.

Each device replays history: packet i has DataTime = start + i minutes, so every valid packet
has a distinct storage key and "stored exactly once" can be checked by counting keys.

Printed: packets/s accepted, ack latency percentiles, and sent / stored / quarantined / lost,
where lost = sent - stored - quarantined (must be 0).

With ``--db spatialite`` or ``--db postgis`` the server stores through ``layers.monitoring.DbSink``
instead of memory: a fresh database (a temporary SpatiaLite file, or a new PostGIS database
made from ``LEADGRID_TEST_POSTGRES_URL`` and dropped afterwards) is migrated, every simulated
device is registered as a monitoring point with a TSP limit (100, minute data, 3 in a row), so
the exceedance engine and lead intake run too, and stored / quarantined are counted in the
database. An ack then means "committed".

    .venv/bin/python bench/hj212.py --devices 1000 --seconds 60
    .venv/bin/python bench/hj212.py --devices 1000 --seconds 60 --db postgis
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, select

from api.hj212_server import InMemorySink, start_hj212_server
from layers.hj212 import build_packet, format_cp, format_datatime
from layers.models import Lead
from layers.monitoring_store import MonitoringQuarantine

POLLUTANTS = ("a34001", "a34002", "a34004")  # TSP, PM10, PM2.5: a dust monitor (ST=39)
START = datetime(2024, 1, 1, tzinfo=UTC)


def _use_uvloop(flag: bool) -> None:
    if flag:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# -- server process ----------------------------------------------------------------------------


def _db_server_main(conn: Connection, uvloop: bool, url: str, devices: int, batch: int, delay: float) -> None:
    _use_uvloop(uvloop)
    from layers import migrate, monitoring, routing
    from layers.db import make_engine, session_factory, unit_of_work
    from layers.exceedance import parse_limits
    from layers.settings import Settings

    engine = make_engine(Settings(database_url=url))
    migrate.upgrade(engine)
    sessions = session_factory(engine)
    with unit_of_work(sessions) as s:
        routing.seed(s, Path(__file__).resolve().parents[1] / "data", now=START)
        limits = parse_limits({"a34001": {"limit": 100, "unit": "ug/m3", "period": "minute", "consecutive": 3}})
        monitoring.upsert_points(s, [
            monitoring.PointIn(mn=f"BENCH{n:06d}", name=f"bench {n}", lon=117.0 + n * 1e-4, lat=34.2,
                               kind="dust", limits=limits) for n in range(devices)], actor="bench", now=START)
    sink = monitoring.DbSink(sessions, batch_size=batch, max_delay=delay)

    async def main() -> None:
        server = await start_hj212_server("127.0.0.1", 0, sink, max_connections=100_000)
        conn.send(server.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        async with server:
            await loop.run_in_executor(None, conn.recv)  # "stop"
            server.close()
            await asyncio.sleep(1.0)
        await sink.close()
        with unit_of_work(sessions) as s:
            counts = monitoring.stored_counts(s)
            leads_n = s.scalar(select(func.count(Lead.id))) or 0
            reasons = sorted({k for (k,) in s.execute(select(MonitoringQuarantine.kind).distinct())})
        conn.send(
            {
                "packets": sink.totals.packets,
                "readings": counts["readings"],
                "distinct_reading_keys": counts["readings"],  # the unique key makes them distinct
                "duplicates": sink.totals.readings_duplicate,
                "quarantined": counts["quarantine"],
                "quarantine_reasons": reasons,
                "batches": sink.batches,
                "episodes": counts["episodes"],
                "leads": int(leads_n),
            }
        )

    asyncio.run(main())
    engine.dispose()


def _server_main(conn: Connection, uvloop: bool) -> None:
    _use_uvloop(uvloop)
    sink = InMemorySink()

    async def main() -> None:
        server = await start_hj212_server("127.0.0.1", 0, sink, max_connections=100_000)
        conn.send(server.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        async with server:
            await loop.run_in_executor(None, conn.recv)  # "stop"
            server.close()
            # Connections close themselves after the clients hang up; give them a moment.
            await asyncio.sleep(1.0)
        keys = {(r.mn, r.cn, r.data_time, r.pollutant) for p in sink.packets for r in p.readings}
        conn.send(
            {
                "packets": len(sink.packets),
                "readings": len(sink.readings),
                "distinct_reading_keys": len(keys),
                "duplicates": sink.duplicates,
                "quarantined": len(sink.quarantined),
                "quarantine_reasons": sorted({q.reason.split(":")[0] for q in sink.quarantined}),
            }
        )

    asyncio.run(main())


# -- client processes --------------------------------------------------------------------------


@dataclass
class ClientStats:
    sent_good: int = 0
    sent_bad: int = 0
    acked: int = 0
    bad_acks: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    first_send: float = float("inf")  # wall clock, comparable across processes
    last_ack: float = 0.0


@functools.lru_cache(maxsize=4096)
def _minute(i: int) -> tuple[str, str]:
    """(QN, CP) of the i-th minute: the same for every device, so built once."""
    moment = START + timedelta(minutes=i)
    cp: dict[str, object] = {"DataTime": format_datatime(moment)}
    for n, code in enumerate(POLLUTANTS):
        cp[f"{code}-Avg"] = round(20 + (i * 7 + n * 13) % 90 + 0.5, 1)
        cp[f"{code}-Flag"] = "N"
    return format_datatime(moment, millis=True), format_cp(cp)


def _packet(mn: str, i: int, bad: bool) -> bytes:
    qn, cp = _minute(i)
    wire = build_packet(cn="2051", st="39", mn=mn, qn=qn, flag=4 if bad else 5, cp=cp)
    if bad:
        # Flip one CRC digit: still hex, certainly wrong.
        crc = wire[-6:-2]
        flipped = b"%04X" % (int(crc, 16) ^ 0x1000)
        wire = wire[:-6] + flipped + b"\r\n"
    return wire


async def _device(mn: str, port: int, deadline: float, bad_every: int, stats: ClientStats) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        stats.errors += 1
        return
    i = 0
    try:
        while time.monotonic() < deadline:
            bad = bad_every > 0 and i % bad_every == bad_every - 1
            wire = _packet(mn, i, bad)
            t0 = time.perf_counter()
            stats.first_send = min(stats.first_send, time.time())
            writer.write(wire)
            if bad:
                stats.sent_bad += 1
                await writer.drain()
            else:
                stats.sent_good += 1
                ack = await asyncio.wait_for(reader.readuntil(b"\r\n"), 30)
                stats.latencies.append(time.perf_counter() - t0)
                stats.last_ack = time.time()
                qn = _minute(i)[0]
                if b"CN=9014" in ack and f"QN={qn};".encode() in ack:
                    stats.acked += 1
                else:
                    stats.bad_acks += 1
            i += 1
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        stats.errors += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _client_main(
    conn: Connection, port: int, first: int, count: int, seconds: float, bad_every: int, uv: bool
) -> None:
    _use_uvloop(uv)
    stats = ClientStats()

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(
            *(
                _device(f"BENCH{n:06d}", port, deadline, bad_every, stats)
                for n in range(first, first + count)
            )
        )

    asyncio.run(main())
    conn.send(stats)


def _fresh_database(kind: str, cleanup: list[Callable[[], None]]) -> str:
    if kind == "spatialite":
        folder = Path(tempfile.mkdtemp(prefix="leadgrid-bench-"))
        cleanup.append(lambda: shutil.rmtree(folder, ignore_errors=True))
        return f"sqlite:///{folder / 'bench.sqlite'}"
    admin_url = os.environ.get("LEADGRID_TEST_POSTGRES_URL")
    if not admin_url:
        raise SystemExit("--db postgis needs LEADGRID_TEST_POSTGRES_URL (a server where databases can be created)")
    from sqlalchemy import create_engine, text

    name = f"leadgrid_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    cleanup.append(drop)
    return admin_url.rsplit("/", 1)[0] + "/" + name


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--client-procs", type=int, default=1)
    ap.add_argument("--bad-every", type=int, default=10, help="0 disables corrupted packets")
    ap.add_argument("--uvloop", action="store_true", help="run the server on uvloop")
    ap.add_argument("--db", choices=("spatialite", "postgis"), help="store with DbSink in a fresh database")
    ap.add_argument("--batch", type=int, default=500, help="DbSink batch size")
    ap.add_argument("--delay-ms", type=float, default=200, help="DbSink longest batch wait")
    args = ap.parse_args(argv)

    ctx = mp.get_context("spawn")
    srv_conn, srv_child = ctx.Pipe()
    cleanup: list[Callable[[], None]] = []
    if args.db:
        url = _fresh_database(args.db, cleanup)
        server = ctx.Process(target=_db_server_main, args=(srv_child, args.uvloop, url, args.devices,
                                                           args.batch, args.delay_ms / 1000))
    else:
        server = ctx.Process(target=_server_main, args=(srv_child, args.uvloop))
    server.start()
    port = srv_conn.recv()

    per = -(-args.devices // args.client_procs)
    clients = []
    t0 = time.monotonic()
    for k in range(args.client_procs):
        first = k * per
        count = min(per, args.devices - first)
        if count <= 0:
            break
        parent, child = ctx.Pipe()
        # Clients always use uvloop when available so the measurement is of the server.
        proc = ctx.Process(
            target=_client_main,
            args=(child, port, first, count, args.seconds, args.bad_every, True),
        )
        proc.start()
        clients.append((proc, parent))
    stats = ClientStats()
    for proc, parent in clients:
        s: ClientStats = parent.recv()
        proc.join()
        stats.sent_good += s.sent_good
        stats.sent_bad += s.sent_bad
        stats.acked += s.acked
        stats.bad_acks += s.bad_acks
        stats.errors += s.errors
        stats.latencies += s.latencies
        stats.first_send = min(stats.first_send, s.first_send)
        stats.last_ack = max(stats.last_ack, s.last_ack)
    elapsed = time.monotonic() - t0
    srv_conn.send("stop")
    result = srv_conn.recv()
    server.join()
    for undo in cleanup:
        undo()

    sent = stats.sent_good + stats.sent_bad
    stored = result["packets"]
    quarantined = result["quarantined"]
    lost = sent - stored - quarantined
    lat_ms = [x * 1000 for x in stats.latencies]
    print(f"devices            {args.devices} over {elapsed:.1f} s (server uvloop={args.uvloop}, "
          f"storage {args.db or 'memory'})")
    print(f"sent               {sent} ({stats.sent_good} valid, {stats.sent_bad} corrupted CRC)")
    print(
        f"stored             {stored} packets, {result['readings']} readings "
        f"({result['distinct_reading_keys']} distinct keys, {result['duplicates']} duplicates)"
    )
    print(f"quarantined        {quarantined} {result['quarantine_reasons']}")
    if args.db:
        print(f"database           {result['batches']} transactions (batch {args.batch}, "
              f"wait {args.delay_ms:g} ms); {result['episodes']} exceedance episodes, {result['leads']} leads")
    print(f"lost               {lost}")
    print(
        f"acked              {stats.acked} "
        f"(wrong acks {stats.bad_acks}, client errors {stats.errors})"
    )
    window = stats.last_ack - stats.first_send
    print(
        f"accepted packets/s {stored / window:,.0f} over the {window:.1f} s sending window "
        f"({stored / elapsed:,.0f} over the whole run incl. process start and connects)"
    )
    p50, p99 = _percentile(lat_ms, 0.50), _percentile(lat_ms, 0.99)
    print(
        f"ack latency ms     p50 {p50:.1f}  p99 {p99:.1f}"
        f"  max {max(lat_ms, default=float('nan')):.1f}"
    )
    ok = (
        lost == 0
        and stats.bad_acks == 0
        and quarantined == stats.sent_bad
        and result["readings"] == stats.sent_good * len(POLLUTANTS)
    )
    print("result             " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
