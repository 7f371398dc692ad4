"""HJ 212 receiver: an asyncio TCP server and the HTTP payload handler, over one sink.

Data loggers connect as TCP clients and push packets (``layers.hj212`` does the framing and
parsing). Each connection gets its own task, framer and reassembler, so a slow or hostile
peer can only waste its own task: reads and writes have timeouts and every buffer is capped.
Whatever cannot be accepted goes to ``sink.quarantine`` with its raw bytes and the reason;
nothing is dropped silently. Storage is injected (:class:`HJ212Sink`) so the monitoring layer
can be wired in without this module knowing about a database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import operator
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from layers.hj212 import (
    HJ212_MAX_FRAME,
    Frame,
    Framer,
    Packet,
    PacketError,
    Reading,
    Reassembler,
    Rejected,
    RejectReason,
    build_reply,
    clock_skew,
    parse_packet,
)

__all__ = [
    "GC_YOUNG_THRESHOLD",
    "HJ212Sink",
    "InMemorySink",
    "Quarantined",
    "handle_http_payload",
    "serve_hj212",
    "start_hj212_server",
    "tune_gc",
]

log = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024

#: Allocations between two young-generation collections in a receiver process (Python: 700).
GC_YOUNG_THRESHOLD = 50_000


def tune_gc(young: int = GC_YOUNG_THRESHOLD) -> None:
    """Configure the garbage collector of a receiver process; call once, after start-up.

    Every packet and every batch allocates thousands of short-lived objects, so with Python's
    defaults the collector runs hundreds of times per batch, and each run also walks the
    long-lived objects of the libraries (SQLAlchemy, pandas ...). Freezing what exists after
    start-up takes those out of every collection, and a higher young-generation threshold
    makes collections rare (a profiled batch of 500 packets: about 30 % less CPU). Memory is
    still reclaimed: reference counting frees nearly everything, and cycles at the next run.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young, older, oldest)


class HJ212Sink(Protocol):
    """Where the receiver hands accepted packets and quarantined bytes."""

    async def accept(self, packet: Packet, received_at: datetime, peer: str) -> None:
        """Store an accepted packet (``packet.clock_skew`` is already filled in)."""
        ...

    async def quarantine(self, raw: bytes, reason: str, received_at: datetime, peer: str) -> None:
        """Keep bytes that could not be accepted, with the reason."""
        ...


@dataclass(frozen=True, slots=True)
class Quarantined:
    """One quarantined item held by :class:`InMemorySink`."""

    raw: bytes
    reason: str
    received_at: datetime
    peer: str


@dataclass
class InMemorySink:
    """Sink for tests and the benchmark; readings are kept idempotently.

    ``readings`` is keyed by (MN, CN, DataTime, pollutant), the same key the database uses,
    so a retransmitted upload is stored once (``duplicates`` counts the repeats).
    """

    packets: list[Packet] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    readings: dict[tuple[str, str, datetime | None, str], Reading] = field(default_factory=dict)
    duplicates: int = 0

    async def accept(self, packet: Packet, received_at: datetime, peer: str) -> None:
        """Record the packet and its readings."""
        self.packets.append(packet)
        for r in packet.readings:
            key = (r.mn, r.cn, r.data_time, r.pollutant)
            if key in self.readings:
                self.duplicates += 1
            else:
                self.readings[key] = r

    async def quarantine(self, raw: bytes, reason: str, received_at: datetime, peer: str) -> None:
        """Record the rejected bytes."""
        self.quarantined.append(Quarantined(raw, reason, received_at, peer))


# Packet fields in constructor order, without the two the receiver fills in (received_at,
# clock_skew, the last two): rebuilding positionally costs half of ``dataclasses.replace``.
_PACKET_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(Packet)[:-2]))
if [f.name for f in dataclasses.fields(Packet)[-2:]] != ["received_at", "clock_skew"]:
    raise RuntimeError("layers.hj212.Packet must end with received_at, clock_skew (see _received)")

# Quarantined items whose storage a connection has not waited for yet, at most.
_MAX_UNCONFIRMED = 32


def _received(packet: Packet, received_at: datetime) -> Packet:
    values: list[Any] = [*_PACKET_FIELDS(packet), received_at, clock_skew(packet, received_at)]
    return Packet(*values)


class _Session:
    """Framing → parsing → reassembly → sink, for one connection or one HTTP body.

    Accepted packets are acknowledged only after the sink has stored them; when one read
    brought several, they are handed to the sink together so they can share one batch.
    Quarantined bytes owe the device no answer, so the connection neither waits for their
    storage before reading on nor before acknowledging the next good packet (a device that
    sends a corrupted packet and then a good one would otherwise wait for two commits). It
    waits for them when more than ``_MAX_UNCONFIRMED`` are outstanding, so a peer sending junk
    still only goes as fast as the storage, and at :meth:`settle` (on close).
    """

    def __init__(
        self,
        sink: HJ212Sink,
        peer: str,
        *,
        framer: Framer | None = None,
        reassembler: Reassembler | None = None,
        accept_modbus_swapped: bool = False,
    ) -> None:
        self.sink = sink
        self.peer = peer
        self.framer = framer or Framer()
        self.reassembler = reassembler or Reassembler()
        self.accept_modbus_swapped = accept_modbus_swapped
        self._unconfirmed: list[asyncio.Task[None]] = []

    async def handle(self, items: Iterable[Frame | Rejected], received_at: datetime) -> list[bytes]:
        parsed: list[tuple[Packet, Packet | None]] = []  # (packet, the whole upload once complete)
        for item in items:
            if isinstance(item, Rejected):
                self._quarantine_soon(item.raw, f"{item.reason.value}: {item.detail}", received_at)
                continue
            try:
                packet = parse_packet(
                    item, accept_modbus_swapped=self.accept_modbus_swapped, received_at=received_at
                )
                whole = self.reassembler.add(packet, time.monotonic())
            except PacketError as exc:
                self._quarantine_soon(item.raw, f"{exc.reason.value}: {exc}", received_at)
                continue
            except Exception as exc:
                # A receiver bug must cost neither the bytes nor the other packets of this read.
                log.exception("hj212 parser failed on a frame from %s", self.peer)
                self._quarantine_soon(item.raw, f"{RejectReason.PARSER_ERROR.value}: {exc!r}", received_at)
                continue
            parsed.append((packet, whole))
        for lost in self.reassembler.expire(time.monotonic()):
            self._incomplete(lost.parts, lost.reason, received_at)
        if len(parsed) == 1:  # the usual case: awaited directly, no task per packet
            replies = [await self._accept(*parsed[0], received_at)]
        elif parsed:
            # Tasks start in creation order, so the sink receives the packets in arrival order.
            replies = list(await asyncio.gather(*(self._accept(p, w, received_at) for p, w in parsed)))
        else:
            replies = []
        self._unconfirmed = [t for t in self._unconfirmed if not t.done()]
        if len(self._unconfirmed) > _MAX_UNCONFIRMED:
            await self.settle()
        return [r for r in replies if r is not None]

    async def settle(self) -> None:
        """Wait until every quarantined item handed over so far is stored."""
        while self._unconfirmed:
            pending, self._unconfirmed = self._unconfirmed, []
            await asyncio.gather(*pending)

    async def close(self, received_at: datetime) -> None:
        await self.handle(self.framer.flush(), received_at)
        for lost in self.reassembler.flush():
            self._incomplete(lost.parts, lost.reason, received_at)
        await self.settle()

    async def _accept(self, packet: Packet, whole: Packet | None, received_at: datetime) -> bytes | None:
        if whole is not None:
            if whole is not packet:
                # A split upload merged from its parts: stamped with the read that completed it.
                whole = _received(whole, received_at)
            try:
                await self.sink.accept(whole, received_at, self.peer)
            except Exception as exc:
                # Storage failed: keep the bytes and withhold the ack so the device retransmits.
                log.exception("hj212 sink.accept failed for %s", self.peer)
                await self._quarantine(
                    whole.raw, f"{RejectReason.SINK_ERROR.value}: {exc!r}", received_at
                )
                return None
        # Sub-packets are acknowledged one by one, each echoing its own QN (§10).
        return build_reply(packet)

    def _incomplete(self, parts: Iterable[Packet], reason: str, at: datetime) -> None:
        raw = b"".join(p.raw for p in parts)
        self._quarantine_soon(raw, f"{RejectReason.INCOMPLETE_SPLIT.value}: {reason}", at)

    def _quarantine_soon(self, raw: bytes, reason: str, received_at: datetime) -> None:
        self._unconfirmed.append(asyncio.ensure_future(self._quarantine(raw, reason, received_at)))

    async def _quarantine(self, raw: bytes, reason: str, received_at: datetime) -> None:
        try:
            await self.sink.quarantine(raw, reason, received_at, self.peer)
        except Exception:
            # Nothing else can be done with these bytes; the connection must live on.
            log.exception("hj212 sink.quarantine failed for %s (%s)", self.peer, reason)


async def handle_http_payload(
    body: bytes,
    sink: HJ212Sink,
    peer: str,
    *,
    reassembler: Reassembler | None = None,
    accept_modbus_swapped: bool = False,
) -> list[bytes]:
    """Process one HTTP body holding one or more packets; return the replies due.

    Same path as the TCP server. A last packet without its CRLF is accepted (bodies are
    often posted without it). Pass a long-lived ``reassembler`` to join split uploads that
    arrive in separate requests.
    """
    received_at = datetime.now(UTC)
    session = _Session(
        sink, peer, reassembler=reassembler, accept_modbus_swapped=accept_modbus_swapped
    )
    replies = await session.handle(session.framer.feed(body), received_at)
    replies += await session.handle(session.framer.flush(), received_at)
    if reassembler is None:
        # A throwaway reassembler cannot be completed later: quarantine its leftovers now.
        await session.close(received_at)
    await session.settle()
    return replies


@dataclass
class _Limits:
    max_connections: int
    idle_timeout: float
    write_timeout: float
    max_packet: int
    max_buffer: int
    reassembly_timeout: float
    accept_modbus_swapped: bool
    active: int = 0


class _IdleTimer:
    """Cancels the connection's task when one read has waited ``timeout`` seconds.

    Does what ``asyncio.timeout`` around every read would, for less: that arms and disarms a
    loop timer per read (a few microseconds each, on every packet), whereas this keeps one timer
    per connection that re-arms itself only when it fires, and a read merely notes its start.
    """

    def __init__(self, timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None  # called from the connection's task
        self.task = task
        self.timeout = timeout
        self.reading = False
        self.since = self.loop.time()
        self.expired = False
        self._handle = self.loop.call_at(self.since + timeout, self._fire)

    def start_read(self) -> None:
        self.since = self.loop.time()
        self.reading = True

    def _fire(self) -> None:
        now = self.loop.time()
        due = self.since + self.timeout
        if self.reading and now >= due:
            self.expired = True
            self.task.cancel()
            return
        # Not waiting in a read (handling, writing), or a read that started later: check again.
        self._handle = self.loop.call_at(due if self.reading else now + self.timeout, self._fire)

    def close(self) -> None:
        self._handle.cancel()


async def _connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    sink: HJ212Sink,
    limits: _Limits,
) -> None:
    addr = writer.get_extra_info("peername")
    peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
    if limits.active >= limits.max_connections:
        log.warning("hj212: refusing %s, %d connections open", peer, limits.active)
        writer.close()
        return
    limits.active += 1
    session = _Session(
        sink,
        peer,
        framer=Framer(limits.max_packet, limits.max_buffer),
        reassembler=Reassembler(timeout=limits.reassembly_timeout),
        accept_modbus_swapped=limits.accept_modbus_swapped,
    )
    idle = _IdleTimer(limits.idle_timeout)
    transport = writer.transport
    try:
        while True:
            idle.start_read()
            try:
                data = await reader.read(_READ_SIZE)
            except asyncio.CancelledError:
                # Ours only if the idle timer cancelled and nobody else did (as asyncio.timeout).
                if not idle.expired or idle.task.uncancel() > 0:
                    raise
                log.info("hj212: %s idle for %.0f s, closing", peer, limits.idle_timeout)
                break
            finally:
                idle.reading = False
            if not data:
                break
            replies = await session.handle(session.framer.feed(data), datetime.now(UTC))
            if replies:
                writer.write(b"".join(replies) if len(replies) > 1 else replies[0])
                if transport.get_write_buffer_size():
                    # The socket did not take it all: a peer that does not read its acks only
                    # stalls its own task, and not forever.
                    async with asyncio.timeout(limits.write_timeout):
                        await writer.drain()
    except (ConnectionError, TimeoutError, OSError) as exc:
        log.info("hj212: %s dropped: %r", peer, exc)
    except Exception:
        log.exception("hj212: unexpected error on %s", peer)
    finally:
        idle.close()
        limits.active -= 1
        try:
            await session.close(datetime.now(UTC))
        except Exception:
            log.exception("hj212: closing session of %s", peer)
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)


async def start_hj212_server(
    host: str,
    port: int,
    sink: HJ212Sink,
    *,
    max_connections: int = 5000,
    idle_timeout: float = 900.0,
    write_timeout: float = 30.0,
    max_packet: int = HJ212_MAX_FRAME,
    max_buffer: int = 64 * 1024,
    reassembly_timeout: float = 120.0,
    accept_modbus_swapped: bool = False,
) -> asyncio.Server:
    """Start listening and return the server (``port=0`` picks a free port).

    Parameters are those of :func:`serve_hj212`.
    """
    limits = _Limits(
        max_connections=max_connections,
        idle_timeout=idle_timeout,
        write_timeout=write_timeout,
        max_packet=max_packet,
        max_buffer=max_buffer,
        reassembly_timeout=reassembly_timeout,
        accept_modbus_swapped=accept_modbus_swapped,
    )

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _connection(reader, writer, sink, limits)

    # A listen queue for the whole fleet: after a receiver restart every logger reconnects at
    # once, and connections beyond the queue have their SYNs dropped and retried by the kernel
    # after 1, 3, 7, 15, 31 s. (The kernel caps it at net.core.somaxconn.)
    backlog = min(max(max_connections, 1024), 65535)
    return await asyncio.start_server(on_connect, host, port, limit=max_buffer, backlog=backlog)


async def serve_hj212(
    host: str,
    port: int,
    sink: HJ212Sink,
    *,
    max_connections: int = 5000,
    idle_timeout: float = 900.0,
    write_timeout: float = 30.0,
    max_packet: int = HJ212_MAX_FRAME,
    max_buffer: int = 64 * 1024,
    reassembly_timeout: float = 120.0,
    accept_modbus_swapped: bool = False,
) -> None:
    """Serve HJ 212 over TCP until cancelled.

    Parameters
    ----------
    host, port
        Where to listen.
    sink
        Receives accepted packets and quarantined bytes.
    max_connections
        Connections beyond this are closed at once.
    idle_timeout
        Seconds without a byte before a connection is closed. Loggers upload at least
        hourly and many keep the link open, so the default is 15 minutes.
    write_timeout
        Seconds a peer may take to read its replies.
    max_packet, max_buffer
        Framer caps, see :class:`layers.hj212.Framer`.
    reassembly_timeout
        Seconds to wait for the rest of a split upload.
    accept_modbus_swapped
        Accept the byte-swapped CRC-16/MODBUS some devices send (flagged as an anomaly).
    """
    server = await start_hj212_server(
        host,
        port,
        sink,
        max_connections=max_connections,
        idle_timeout=idle_timeout,
        write_timeout=write_timeout,
        max_packet=max_packet,
        max_buffer=max_buffer,
        reassembly_timeout=reassembly_timeout,
        accept_modbus_swapped=accept_modbus_swapped,
    )
    async with server:
        await server.serve_forever()
