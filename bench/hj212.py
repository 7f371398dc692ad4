"""Benchmark the HJ 212 receiver: N simulated data loggers over loopback TCP.

The server (``api.hj212_server``) runs in its own process, as it would in production; the
devices run in one or more client processes. Each device keeps one TCP connection, uploads
minute data (CN=2051, Flag=5 so every packet is acknowledged with 9014) and waits for the ack
before sending the next, so throughput is bounded by the server's latency, not by a client
flooding a socket buffer. Every ``--bad-every``-th packet carries a corrupted CRC (Flag=4, no
ack expected): those must all land in quarantine.

Each device replays history: packet i has DataTime = start + i minutes, so every valid packet
has a distinct storage key and "stored exactly once" can be checked by counting keys.

Printed: packets/s accepted, ack latency percentiles, sent / stored / quarantined / lost, where
lost = sent - stored - quarantined (must be 0), and the CPU time per packet of the server, the
clients and (PostGIS) the database backends, counted from the moment the server listens. The
machine is shared, so compare runs by ratio: ``--baseline`` first runs the in-memory sink with
the same devices and seconds and prints the database run's packets/s as a fraction of it.

With ``--db spatialite`` or ``--db postgis`` the server stores through ``layers.monitoring.DbSink``
instead of memory: a fresh database (a temporary SpatiaLite file, or a new PostGIS database
made from ``LEADGRID_TEST_POSTGRES_URL`` and dropped afterwards) is migrated, every simulated
device is registered as a monitoring point with a TSP limit (100, minute data, 3 in a row), so
the exceedance engine runs on every reading (and opens, updates and closes one episode and lead
per dusty device, see HOT_EVERY), and stored / quarantined are counted in the database. An ack
then means "committed". The server is set up like ``leadgrid hj212 serve``: DbSink defaults,
``api.hj212_server.tune_gc`` (``--no-gc-tuning`` to compare) and, with ``--uvloop``, uvloop.

    .venv/bin/python bench/hj212.py --devices 1000 --seconds 60 --uvloop
    .venv/bin/python bench/hj212.py --devices 1000 --seconds 60 --uvloop --db spatialite --baseline
    .venv/bin/python bench/hj212.py --devices 1000 --seconds 60 --uvloop --db postgis --baseline
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, select

from api.hj212_server import InMemorySink, start_hj212_server, tune_gc
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


class _GcPauses:
    """Garbage-collector pauses of this process (the in-memory sink keeps every packet, so its
    heap grows and full collections get long; the database sink keeps nothing)."""

    def __init__(self) -> None:
        self.total = self.longest = 0.0
        self.full = 0
        self._start = 0.0
        import gc

        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        took = time.perf_counter() - self._start
        self.total += took
        self.longest = max(self.longest, took)
        self.full += info["generation"] == 2

    def summary(self) -> str:
        return f"{self.total:.1f} s in all, {self.full} full collections, longest {self.longest * 1000:.0f} ms"


def _cpu_seconds() -> float:
    """User + system CPU of this process (all its threads) so far."""
    t = os.times()
    return t.user + t.system


def _postgres_cpu(engine: Any) -> Callable[[], float]:
    """CPU seconds the PostgreSQL backends of this benchmark's database used (Linux, local server)."""
    from sqlalchemy import text

    def pids() -> list[int]:
        with engine.connect() as c:
            return [int(p) for (p,) in c.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"))]

    def cpu(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    # Backends live as long as the pooled connections; those open at the end did the work.
    return lambda: sum(cpu(p) for p in pids())


def _db_server_main(conn: Connection, uvloop: bool, url: str, devices: int, batch: int | None,
                    delay: float | None, no_gc_tuning: bool) -> None:
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
    kwargs: dict[str, float] = {}
    if batch:
        kwargs["batch_size"] = batch
    if delay is not None:
        kwargs["max_delay"] = delay
    sink = monitoring.DbSink(sessions, **kwargs)  # type: ignore[arg-type]  # int or float, as declared
    db_cpu = _postgres_cpu(engine) if url.startswith("postgresql") else (lambda: 0.0)
    if not no_gc_tuning:
        tune_gc()  # as `leadgrid hj212 serve` does

    async def main() -> None:
        cpu0 = _cpu_seconds()  # start-up (migrations, registering the points) is not the receiver's cost
        pauses = _GcPauses()
        db_cpu0 = db_cpu()
        server = await start_hj212_server("127.0.0.1", 0, sink, max_connections=100_000)
        conn.send(server.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        async with server:
            await loop.run_in_executor(None, conn.recv)  # "stop"
            server.close()
            unfinished = await _connections_done()
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
                "busy_s": sink.busy_seconds,
                "busy_cpu_s": sink.busy_cpu_seconds,
                "episodes": counts["episodes"],
                "leads": int(leads_n),
                "cpu_s": _cpu_seconds() - cpu0,
                "db_cpu_s": db_cpu() - db_cpu0,
                "gc": pauses.summary(),
                "unfinished": unfinished,
            }
        )

    asyncio.run(main())
    engine.dispose()


async def _connections_done(timeout: float = 60.0) -> int:
    """Wait until every connection has been handled to its end; return how many were not.

    The clients have all hung up when this is called, but the server may still be working
    through what they sent last: its queue was as long as the ack latency, and a device whose
    last packet was a corrupted one (no ack awaited) hung up right after sending it. Counting
    after a fixed grace period (1 s, formerly) missed those whenever the server lagged more,
    and they showed up as "lost".
    """
    me = asyncio.current_task()
    deadline = time.monotonic() + timeout
    while True:
        # Connection handlers are the only tasks besides this one and the sink's own (hj212-*).
        busy = [t for t in asyncio.all_tasks() if t is not me and not t.get_name().startswith("hj212-")]
        if not busy or time.monotonic() > deadline:
            return len(busy)
        await asyncio.sleep(0.05)


def _server_main(conn: Connection, uvloop: bool, no_gc_tuning: bool) -> None:
    _use_uvloop(uvloop)
    sink = InMemorySink()
    if not no_gc_tuning:
        tune_gc()

    async def main() -> None:
        cpu0 = _cpu_seconds()  # start-up (migrations, registering the points) is not the receiver's cost
        pauses = _GcPauses()
        server = await start_hj212_server("127.0.0.1", 0, sink, max_connections=100_000)
        conn.send(server.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        async with server:
            await loop.run_in_executor(None, conn.recv)  # "stop"
            server.close()
            unfinished = await _connections_done()
        keys = {(r.mn, r.cn, r.data_time, r.pollutant) for p in sink.packets for r in p.readings}
        conn.send(
            {
                "packets": len(sink.packets),
                "readings": len(sink.readings),
                "distinct_reading_keys": len(keys),
                "duplicates": sink.duplicates,
                "quarantined": len(sink.quarantined),
                "quarantine_reasons": sorted({q.reason.split(":")[0] for q in sink.quarantined}),
                "cpu_s": _cpu_seconds() - cpu0,
                "gc": pauses.summary(),
                "unfinished": unfinished,
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
    connects: list[float] = field(default_factory=list)  # seconds each device took to connect
    first_send: float = float("inf")  # wall clock, comparable across processes
    last_ack: float = 0.0
    cpu_s: float = 0.0


# Every HOT_EVERY-th device is a dusty site: its TSP is 100 higher from minute HOT_FROM to
# HOT_UNTIL, so with the TSP limit (100, 3 in a row) each opens one episode and one lead, updates
# it batch after batch and closes it, as a real exceedance would, while the others stay clean.
HOT_EVERY, HOT_FROM, HOT_UNTIL = 100, 10, 30


@functools.lru_cache(maxsize=8192)
def _minute(i: int, hot: bool = False) -> tuple[str, str]:
    """(QN, CP) of the i-th minute: the same for every device (of a kind), so built once."""
    moment = START + timedelta(minutes=i)
    cp: dict[str, object] = {"DataTime": format_datatime(moment)}
    for n, code in enumerate(POLLUTANTS):
        extra = 100 if hot and n == 0 and HOT_FROM <= i < HOT_UNTIL else 0
        cp[f"{code}-Avg"] = round(20 + (i * 7 + n * 13) % 90 + 0.5 + extra, 1)
        cp[f"{code}-Flag"] = "N"
    return format_datatime(moment, millis=True), format_cp(cp)


def _packet(mn: str, i: int, bad: bool, hot: bool = False) -> bytes:
    qn, cp = _minute(i, hot)
    wire = build_packet(cn="2051", st="39", mn=mn, qn=qn, flag=4 if bad else 5, cp=cp)
    if bad:
        # Flip one CRC digit: still hex, certainly wrong.
        crc = wire[-6:-2]
        flipped = b"%04X" % (int(crc, 16) ^ 0x1000)
        wire = wire[:-6] + flipped + b"\r\n"
    return wire


async def _device(mn: str, port: int, deadline: float, bad_every: int, stats: ClientStats,
                  hot: bool = False) -> None:
    t0 = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        stats.errors += 1
        return
    stats.connects.append(time.perf_counter() - t0)
    i = 0
    try:
        while time.monotonic() < deadline:
            bad = bad_every > 0 and i % bad_every == bad_every - 1
            wire = _packet(mn, i, bad, hot)
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
    tune_gc()  # the load generator too: its CPU is taken from the same two cores
    stats = ClientStats()
    cpu0 = _cpu_seconds()

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(
            *(
                _device(f"BENCH{n:06d}", port, deadline, bad_every, stats, hot=n % HOT_EVERY == 0)
                for n in range(first, first + count)
            )
        )

    asyncio.run(main())
    stats.cpu_s = _cpu_seconds() - cpu0
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


def _run(args: argparse.Namespace, db: str | None) -> dict[str, Any]:
    """One benchmark run: start the server (memory or ``db``) and the clients; return the figures."""
    ctx = mp.get_context("spawn")
    srv_conn, srv_child = ctx.Pipe()
    cleanup: list[Callable[[], None]] = []
    if db:
        url = _fresh_database(db, cleanup)
        server = ctx.Process(target=_db_server_main, args=(
            srv_child, args.uvloop, url, args.devices, args.batch,
            None if args.delay_ms is None else args.delay_ms / 1000, args.no_gc_tuning))
    else:
        server = ctx.Process(target=_server_main, args=(srv_child, args.uvloop, args.no_gc_tuning))
    server.start()
    port = srv_conn.recv()
    load_before = os.getloadavg()[0]

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
        stats.connects += s.connects
        stats.first_send = min(stats.first_send, s.first_send)
        stats.last_ack = max(stats.last_ack, s.last_ack)
        stats.cpu_s += s.cpu_s
    elapsed = time.monotonic() - t0
    load_after = os.getloadavg()[0]
    srv_conn.send("stop")
    result: dict[str, Any] = srv_conn.recv()
    server.join()
    for undo in cleanup:
        undo()
    result.update(storage=db or "memory", stats=stats, elapsed=elapsed, load=(load_before, load_after))
    return result


def _report(args: argparse.Namespace, result: dict[str, Any]) -> tuple[bool, float]:
    """Print one run; return (its checks passed, accepted packets/s)."""
    stats: ClientStats = result["stats"]
    elapsed = result["elapsed"]
    sent = stats.sent_good + stats.sent_bad
    stored = result["packets"]
    quarantined = result["quarantined"]
    lost = sent - stored - quarantined
    lat_ms = [x * 1000 for x in stats.latencies]
    print(f"== storage {result['storage']}: {args.devices} devices over {elapsed:.1f} s "
          f"(server uvloop={args.uvloop}, gc tuned={not args.no_gc_tuning}; "
          f"load average {result['load'][0]:.2f} -> {result['load'][1]:.2f})")
    print(f"sent               {sent} ({stats.sent_good} valid, {stats.sent_bad} corrupted CRC)")
    print(
        f"stored             {stored} packets, {result['readings']} readings "
        f"({result['distinct_reading_keys']} distinct keys, {result['duplicates']} duplicates)"
    )
    print(f"quarantined        {quarantined} {result['quarantine_reasons']}")
    if "batches" in result:
        print(f"database           {result['batches']} transactions ({sent / max(1, result['batches']):.0f} "
              f"items each on average, writer busy {result['busy_s']:.1f} s, "
              f"{result['busy_cpu_s']:.1f} s of CPU); "
              f"{result['episodes']} exceedance episodes, {result['leads']} leads")
    print(f"lost               {lost}" + (f" ({result['unfinished']} connections still open after 60 s)"
                                             if result["unfinished"] else ""))
    print(
        f"acked              {stats.acked} "
        f"(wrong acks {stats.bad_acks}, client errors {stats.errors})"
    )
    window = stats.last_ack - stats.first_send
    rate = stored / window if window > 0 else float("nan")
    print(
        f"accepted packets/s {rate:,.0f} over the {window:.1f} s sending window "
        f"({stored / elapsed:,.0f} over the whole run incl. process start and connects)"
    )
    p50, p99 = _percentile(lat_ms, 0.50), _percentile(lat_ms, 0.99)
    print(
        f"ack latency ms     p50 {p50:.1f}  p99 {p99:.1f}"
        f"  max {max(lat_ms, default=float('nan')):.1f}"
    )
    per_packet = 1000 / max(1, sent)
    db_cpu = result.get("db_cpu_s")
    print(f"CPU ms per packet  server {result['cpu_s'] * per_packet:.3f}, clients {stats.cpu_s * per_packet:.3f}"
          + (f", postgres backends {db_cpu * per_packet:.3f}" if db_cpu else ""))
    conn_ms = [x * 1000 for x in stats.connects]
    print(f"connect ms         p50 {_percentile(conn_ms, 0.5):.1f}  max {max(conn_ms, default=float('nan')):.1f}"
          f"  ({sum(x > 1000 for x in conn_ms)} devices took over 1 s: a listen backlog overflow retries SYNs "
          "after 1, 3, 7, 15, 31 s)")
    print(f"server GC pauses   {result['gc']}")
    ok = (
        lost == 0
        and stats.bad_acks == 0
        and quarantined == stats.sent_bad
        and result["readings"] == stats.sent_good * len(POLLUTANTS)
    )
    print("result             " + ("OK" if ok else "FAILED"))
    return ok, rate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--client-procs", type=int, default=1)
    ap.add_argument("--bad-every", type=int, default=10, help="0 disables corrupted packets")
    ap.add_argument("--uvloop", action="store_true", help="run the server on uvloop (as `leadgrid hj212 serve` does)")
    ap.add_argument("--no-gc-tuning", action="store_true", help="keep Python's default garbage collector settings "
                    "in the server (`leadgrid hj212 serve` calls api.hj212_server.tune_gc)")
    ap.add_argument("--db", choices=("spatialite", "postgis"), help="store with DbSink in a fresh database")
    ap.add_argument("--baseline", action="store_true",
                    help="with --db: first run the in-memory sink (same devices and seconds) and print ratios")
    ap.add_argument("--batch", type=int, default=None, help="DbSink batch size (default: DbSink's)")
    ap.add_argument("--delay-ms", type=float, default=None, help="DbSink longest batch wait (default: DbSink's)")
    args = ap.parse_args(argv)

    runs = [None, args.db] if args.db and args.baseline else [args.db]
    rates: list[float] = []
    ok = True
    for db in runs:
        passed, rate = _report(args, _run(args, db))
        ok &= passed
        rates.append(rate)
    if len(rates) == 2:
        print(f"== {args.db} / in-memory baseline: {rates[1] / rates[0]:.2f} of the in-memory packets/s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
