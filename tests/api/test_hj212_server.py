"""HJ 212 TCP server over real loopback sockets, and the HTTP payload path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, TypeVar

import pytest

from api.hj212_server import InMemorySink, handle_http_payload, start_hj212_server
from layers.hj212 import Packet, build_packet, crc16_hj212

T0 = 20240101120000
T = TypeVar("T")


def minute_packet(mn: str, i: int, *, flag: int = 5) -> bytes:
    return build_packet(
        cn="2051",
        mn=mn,
        qn=f"20240101120000{i:03d}",
        flag=flag,
        cp={"DataTime": str(T0 + i * 100), "a34001-Avg": 50 + i, "a34001-Flag": "N"},
    )


def expected_ack(mn: str, i: int) -> bytes:
    data = f"QN=20240101120000{i:03d};ST=91;CN=9014;PW=123456;MN={mn};Flag=4;CP=&&&&".encode()
    return b"##%04d%s%04X\r\n" % (len(data), data, crc16_hj212(data))


async def read_ack(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n"), 2.0)


def run(coro_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """No pytest-asyncio here: each test runs its own event loop."""
    return asyncio.run(coro_factory())


def test_good_clients_unaffected_by_garbage_and_stalled_peers() -> None:
    sink = InMemorySink()

    async def scenario() -> dict[str, float]:
        server = await start_hj212_server("127.0.0.1", 0, sink, idle_timeout=1.0)
        port = server.sockets[0].getsockname()[1]
        timings: dict[str, float] = {}

        async def good(mn: str) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for i in range(5):
                wire = minute_packet(mn, i)
                # Split each packet over two writes to exercise reassembly across reads.
                writer.write(wire[:20])
                await writer.drain()
                writer.write(wire[20:])
                assert await read_ack(reader) == expected_ack(mn, i)
            timings[mn] = time.monotonic()
            writer.close()
            await writer.wait_closed()

        async def garbage() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(bytes.fromhex("16030100c4010000c00303") + b"\x00" * 40)
            writer.write(b"##0101QN=bad-crc;CN=2011;CP=&&&&" + b"ABCD\r\n")
            await writer.drain()
            assert await reader.read() == b""  # no reply; closed when idle
            timings["garbage closed"] = time.monotonic()

        async def stalled() -> None:
            # Half a packet, then silence: the server must not wait on it for the others.
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(minute_packet("STALL", 0)[:30])
            await writer.drain()
            await asyncio.sleep(1.6)
            writer.close()

        async with server:
            await asyncio.gather(garbage(), stalled(), *(good(f"GOOD{n}") for n in range(4)))
            await asyncio.sleep(0.1)
        return timings

    timings = run(scenario)
    # The good clients were all served before the garbage peer's idle timeout ran out.
    closed = timings.pop("garbage closed")
    assert len(timings) == 4
    assert max(timings.values()) < closed, timings
    stored = sorted((p.mn, p.qn) for p in sink.packets)
    assert stored == sorted(
        (f"GOOD{n}", f"20240101120000{i:03d}") for n in range(4) for i in range(5)
    )
    assert len(sink.readings) == 20
    reasons = sorted(q.reason.split(":")[0] for q in sink.quarantined)
    assert reasons == ["bad_crc", "junk", "truncated"]
    truncated = next(q for q in sink.quarantined if q.reason.startswith("truncated"))
    assert truncated.raw == minute_packet("STALL", 0)[:30]
    junk = next(q for q in sink.quarantined if q.reason.startswith("junk"))
    assert "TLS" in junk.reason


def test_clock_skew_and_receive_time_filled_in() -> None:
    sink = InMemorySink()

    async def scenario() -> None:
        server = await start_hj212_server("127.0.0.1", 0, sink)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(minute_packet("SKEW", 0) + minute_packet("SKEW", 1, flag=4))
            await read_ack(reader)
            writer.close()
            await writer.wait_closed()
            await asyncio.sleep(0.1)

    run(scenario)
    assert len(sink.packets) == 2
    p = sink.packets[0]
    assert p.received_at is not None and p.clock_skew is not None
    # DataTime 2024-01-01 12:00 Beijing = 04:00 UTC.
    assert p.received_at - p.clock_skew == datetime.fromisoformat("2024-01-01T04:00:00+00:00")


class FailingSink(InMemorySink):
    async def accept(self, packet: Packet, received_at: datetime, peer: str) -> None:
        if packet.qn and packet.qn.endswith("000"):
            raise RuntimeError("database down")
        await super().accept(packet, received_at, peer)


def test_sink_failure_quarantines_withholds_ack_and_keeps_the_connection() -> None:
    sink = FailingSink()

    async def scenario() -> bytes:
        server = await start_hj212_server("127.0.0.1", 0, sink)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(minute_packet("F", 0) + minute_packet("F", 1))
            ack = await read_ack(reader)
            writer.close()
            await writer.wait_closed()
            return ack

    ack = run(scenario)
    assert ack == expected_ack("F", 1)  # packet 0 was not stored, so not acknowledged
    assert [p.qn for p in sink.packets] == ["20240101120000001"]
    assert [q.reason.split(":")[0] for q in sink.quarantined] == ["sink_error"]
    assert sink.quarantined[0].raw == minute_packet("F", 0)


def test_max_connections_refuses_extra_peers() -> None:
    sink = InMemorySink()

    async def scenario() -> bytes:
        server = await start_hj212_server("127.0.0.1", 0, sink, max_connections=1)
        port = server.sockets[0].getsockname()[1]
        async with server:
            r1, w1 = await asyncio.open_connection("127.0.0.1", port)
            w1.write(minute_packet("A", 0))
            await read_ack(r1)  # first connection is established and served
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            closed = await asyncio.wait_for(r2.read(), 2.0)
            w1.close()
            w2.close()
            return closed

    assert run(scenario) == b""
    assert len(sink.packets) == 1


@pytest.mark.parametrize("tail", [b"\r\n", b""])
def test_http_payload_same_path(tail: bytes) -> None:
    sink = InMemorySink()
    body = b"junk" + minute_packet("H", 0) + minute_packet("H", 1)[:-2] + tail
    replies = asyncio.run(handle_http_payload(body, sink, "http:1.2.3.4"))
    assert replies == [expected_ack("H", 0), expected_ack("H", 1)]
    assert [p.mn for p in sink.packets] == ["H", "H"]
    assert [q.raw for q in sink.quarantined] == [b"junk"]


def test_http_payload_incomplete_split_is_quarantined() -> None:
    sink = InMemorySink()
    part = build_packet(
        cn="2061", mn="S", qn="1", flag=7, pnum=2, pno=1, cp="DataTime=20240101000000"
    )
    replies = asyncio.run(handle_http_payload(part, sink, "http:x"))
    assert len(replies) == 1  # each sub-packet is acknowledged
    assert sink.packets == []
    assert [q.reason.split(":")[0] for q in sink.quarantined] == ["incomplete_split"]
    assert sink.quarantined[0].raw == part


class SlowQuarantineSink(InMemorySink):
    """Quarantine takes until ``release`` is set (a slow commit); accept is immediate."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def quarantine(self, raw: bytes, reason: str, received_at: datetime, peer: str) -> None:
        await self.release.wait()
        await super().quarantine(raw, reason, received_at, peer)


def test_quarantine_holds_up_neither_reading_nor_the_next_ack_and_is_stored_by_close() -> None:
    sink = SlowQuarantineSink()

    async def scenario() -> tuple[bytes, int]:
        server = await start_hj212_server("127.0.0.1", 0, sink)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            bad = minute_packet("Q", 0, flag=4)[:-6] + b"0000\r\n"
            writer.write(bad)
            await writer.drain()
            await asyncio.sleep(0.05)  # the corrupted packet arrives in a read of its own
            writer.write(minute_packet("Q", 1))
            # The good packet is stored and acknowledged while the quarantine is still pending.
            ack = await read_ack(reader)
            quarantined_before = len(sink.quarantined)
            sink.release.set()
            writer.close()
            await writer.wait_closed()
            for _ in range(100):  # the connection's close waits for the quarantine
                if sink.quarantined:
                    break
                await asyncio.sleep(0.01)
            return ack, quarantined_before

    ack, quarantined_before = run(scenario)
    assert ack == expected_ack("Q", 1) and quarantined_before == 0
    assert [p.qn for p in sink.packets] == ["20240101120000001"]
    assert [q.reason.split(":")[0] for q in sink.quarantined] == ["bad_crc"]


def test_packets_of_one_read_reach_the_sink_together_and_in_order() -> None:
    class Recording(InMemorySink):
        def __init__(self) -> None:
            super().__init__()
            self.waiting = 0
            self.most_waiting = 0
            self.gate = asyncio.Event()

        async def accept(self, packet: Packet, received_at: datetime, peer: str) -> None:
            await super().accept(packet, received_at, peer)
            self.waiting += 1
            self.most_waiting = max(self.most_waiting, self.waiting)
            if self.waiting == 3:
                self.gate.set()
            await asyncio.wait_for(self.gate.wait(), 1.0)  # a batch commit shared by all three

    sink = Recording()

    async def scenario() -> list[bytes]:
        server = await start_hj212_server("127.0.0.1", 0, sink)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"".join(minute_packet("R", i) for i in range(3)))
            acks = [await read_ack(reader) for _ in range(3)]
            writer.close()
            await writer.wait_closed()
            return acks

    assert run(scenario) == [expected_ack("R", i) for i in range(3)]
    assert sink.most_waiting == 3
    assert [p.qn for p in sink.packets] == [f"20240101120000{i:03d}" for i in range(3)]


def test_idle_timeout_counts_only_silence_in_one_read() -> None:
    # The idle timer is armed once per connection, not per read: a peer that keeps sending
    # more often than the timeout, or waits on a slow sink for longer than it, stays
    # connected; one that falls silent is closed after about the timeout.
    class SlowSink(InMemorySink):
        async def accept(self, packet: Packet, received_at: datetime, peer: str) -> None:
            await asyncio.sleep(0.6)  # a commit slower than the idle timeout
            await super().accept(packet, received_at, peer)

    sink = SlowSink()

    async def scenario() -> tuple[list[bytes], float]:
        server = await start_hj212_server("127.0.0.1", 0, sink, idle_timeout=0.4)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            acks = []
            for i in range(4):
                wire = minute_packet("IDLE", i)
                writer.write(wire[:40])  # drip: each read alone comes well within the timeout
                await asyncio.sleep(0.25)
                writer.write(wire[40:])
                acks.append(await read_ack(reader))
            silent_from = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 2.0) == b""  # closed by the server
            silence = time.monotonic() - silent_from
            writer.close()
            await writer.wait_closed()
            return acks, silence

    acks, silence = run(scenario)
    assert acks == [expected_ack("IDLE", i) for i in range(4)]
    assert 0.35 < silence < 1.2, silence


def test_server_shutdown_still_cancels_a_connection_waiting_in_read() -> None:
    sink = InMemorySink()

    async def scenario() -> bool:
        server = await start_hj212_server("127.0.0.1", 0, sink, idle_timeout=30.0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(minute_packet("C", 0))
        await read_ack(reader)
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in handlers:
            t.cancel()
        done, _ = await asyncio.wait(handlers, timeout=2.0)
        server.close()
        writer.close()
        return len(done) == len(handlers) and all(t.cancelled() for t in done)

    assert run(scenario)
    assert len(sink.packets) == 1


def test_a_parser_bug_quarantines_that_frame_and_spares_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception in parsing (a receiver bug, not bad input) loses no bytes."""
    import api.hj212_server as server_mod

    real = server_mod.parse_packet

    def flaky(frame: Any, **kw: Any) -> Packet:
        if b"MN=BUG;" in frame.raw:
            raise RuntimeError("simulated parser bug")
        return real(frame, **kw)

    monkeypatch.setattr(server_mod, "parse_packet", flaky)
    sink = InMemorySink()
    body = minute_packet("BUG", 0) + minute_packet("OK", 1)
    replies = asyncio.run(handle_http_payload(body, sink, "http:x"))
    assert replies == [expected_ack("OK", 1)]
    assert [p.mn for p in sink.packets] == ["OK"]
    assert [q.reason.split(":")[0] for q in sink.quarantined] == ["parser_error"]
    assert sink.quarantined[0].raw == minute_packet("BUG", 0)
