"""HJ 212-2017 / HJ/T 212-2005 codec: framing, CRC, parsing, split reassembly and replies.

Pure: no database, no sockets. ``api.hj212_server`` drives it over TCP and HTTP; the monitoring
layer stores what it produces. The notes this follows are ``../shared/docs/hj212.md``; section
numbers in comments (§n) refer to them.

A packet on the wire is ``"##" LLLL <data segment> CCCC "\\r\\n"`` where ``LLLL`` is the byte length
of the data segment and ``CCCC`` the Appendix A CRC of the data segment (§1, §2).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntFlag, StrEnum
from zoneinfo import ZoneInfo

from layers.errors import Invalid

__all__ = [
    "HJ212_MAX_FRAME",
    "Anomaly",
    "DataFlag",
    "Dialect",
    "Frame",
    "Framer",
    "Packet",
    "PacketError",
    "PacketFlag",
    "Reading",
    "Reassembler",
    "RejectReason",
    "Rejected",
    "build_packet",
    "build_reply",
    "clock_skew",
    "crc16_hj212",
    "format_cp",
    "format_datatime",
    "frame_data",
    "parse_packet",
]

#: Beijing time: the standard names no zone, devices send local time (§11).
DEVICE_TZ = ZoneInfo("Asia/Shanghai")

#: ``##`` + 4-digit length (so at most 9999 data bytes) + CRC + CRLF (§1).
HJ212_MAX_FRAME = 2 + 4 + 9999 + 4 + 2

_HEAD = b"##"
_CRLF = b"\r\n"


# --------------------------------------------------------------------------------------------
# CRC (Appendix A)


def _reflected_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        reg = i
        for _ in range(8):
            reg = (reg >> 1) ^ 0xA001 if reg & 1 else reg >> 1
        table.append(reg)
    return tuple(table)


_CRC_TABLE = _reflected_table()

# Only ``reg >> 8`` survives from one byte to the next (§2): the register after a byte ``b`` is
# ``T[h ^ b]`` where ``h`` is the previous register's high byte. So the high byte after two more
# bytes depends on 16 bits only, ``h ^ b1`` and ``b2``: one lookup in a 65,536-entry table steps
# over a pair of bytes, which halves the Python loop (the hot path checks the CRC of every packet
# and computes the CRC of every answer). The index is a 16-bit word as ``memoryview.cast("H")``
# yields it on a little-endian machine, ``b1 | b2 << 8``, so ``h`` XORs straight into it.
_CRC_HIGH = tuple(t >> 8 for t in _CRC_TABLE)
_CRC_PAIRS = tuple(_CRC_HIGH[_CRC_HIGH[w & 0xFF] ^ (w >> 8)] for w in range(0x10000))
_LITTLE_ENDIAN = sys.byteorder == "little"


def crc16_hj212(data: bytes) -> int:
    """CRC of an HJ 212 data segment, exactly as HJ 212-2017 Appendix A defines it.

    This is *not* CRC-16/MODBUS: the register is shifted right 8 bits *before* the byte is
    XORed in, so only 8 bits of state survive from one byte to the next (§2).

    Parameters
    ----------
    data : bytes
        The data segment only (from ``QN=`` up to, not including, the CRC).

    Returns
    -------
    int
        The 16-bit CRC; write it as ``f"{crc:04X}"``.

    Examples
    --------
    >>> f"{crc16_hj212(b'ST=32'):04X}"
    '60C0'
    """
    n = len(data)
    if n == 0:
        return 0xFFFF
    if not _LITTLE_ENDIAN:
        return _crc16_hj212_bytes(data)
    h = 0xFF  # high byte of the initial register 0xFFFF
    view = memoryview(data)
    # Every byte but the last moves the high byte on; the last one gives the whole register.
    start = 1 if n % 2 == 0 else 0  # an even number of bytes must remain before the last
    if start:
        h = _CRC_HIGH[h ^ view[0]]
    pairs = _CRC_PAIRS
    for w in view[start : n - 1].cast("H"):
        h = pairs[w ^ h]
    return _CRC_TABLE[h ^ view[n - 1]]


def _crc16_hj212_bytes(data: bytes) -> int:
    # One byte per step: the plain table form, for big-endian machines (and the tests' cross-check).
    reg = 0xFFFF
    table = _CRC_TABLE
    for b in data:
        # Table form of "reg = (reg >> 8) ^ b, then 8 shift/XOR steps".
        reg = table[((reg >> 8) ^ b) & 0xFF]
    return reg


def _modbus_swapped(data: bytes) -> int:
    crc = _crc16_modbus(data)
    return ((crc & 0xFF) << 8) | (crc >> 8)


def _crc16_modbus(data: bytes) -> int:
    # Only used to recognise devices that send CRC-16/MODBUS low byte first (§2, deviations).
    reg = 0xFFFF
    table = _CRC_TABLE
    for b in data:
        reg = (reg >> 8) ^ table[(reg ^ b) & 0xFF]
    return reg


# --------------------------------------------------------------------------------------------
# Enums and errors


class RejectReason(StrEnum):
    """Why bytes or a packet could not be accepted; stored with the quarantined raw bytes."""

    JUNK = "junk"  # bytes before "##": scanners, TLS ClientHello, line noise
    TRUNCATED = "truncated"  # a packet cut short (a new "##" or end of stream came first)
    OVERSIZED = "oversized"  # no packet end within the frame cap
    NO_CRC = "no_crc"  # the 4 characters before CRLF are not hex
    BAD_CRC = "bad_crc"
    MALFORMED = "malformed"  # header fields missing or not parseable
    BAD_DATATIME = "bad_datatime"
    BAD_SPLIT = "bad_split"  # PNUM/PNO inconsistent
    INCOMPLETE_SPLIT = "incomplete_split"  # some sub-packets never arrived
    SINK_ERROR = "sink_error"
    PARSER_ERROR = "parser_error"  # the receiver itself failed on these bytes (a bug): kept to replay


class Anomaly(StrEnum):
    """Tolerated deviations from the standard, recorded on the frame or packet (§12)."""

    LENGTH_MISMATCH = "length_mismatch"  # 4-digit length field disagrees with the bytes
    LENGTH_GARBLED = "length_garbled"  # length field not 4 digits
    NO_CRLF = "no_crlf"  # stream or HTTP body ended without the CRLF tail
    LOWERCASE_CRC = "lowercase_crc"
    CRC_MODBUS_SWAPPED = "crc_modbus_swapped"
    NON_UTF8 = "non_utf8"
    UNDECODABLE = "undecodable"  # neither UTF-8 nor GB18030: decoded as latin-1
    CP_MISSING = "cp_missing"
    CP_UNTERMINATED = "cp_unterminated"  # closing "&&" missing
    BAD_ITEM = "bad_item"  # a "key=value" without "=" or with an empty key
    BAD_NUMBER = "bad_number"
    DUPLICATE_FIELD = "duplicate_field"  # same factor field twice with different values
    DUPLICATE_HEADER = "duplicate_header"
    FLAG_SPLIT_MISMATCH = "flag_split_mismatch"  # D bit and PNUM/PNO presence disagree
    UNKNOWN_VERSION = "unknown_version"


class Dialect(StrEnum):
    """Protocol revision, from the Flag version bits (§4); no Flag means 2005."""

    HJ212_2005 = "2005"
    HJ212_2017 = "2017"
    HJ212_2025 = "2025"
    UNKNOWN = "unknown"


class PacketFlag(IntFlag):
    """Low bits of the header ``Flag`` (§4); bits 2-7 are the version."""

    ACK = 1  # A: the sender wants an answer
    SPLIT = 2  # D: the packet carries PNUM/PNO


class DataFlag(StrEnum):
    """Instrument data flags ``xxxxxx-Flag`` (2017 Table 8, plus 2005's P; §8)."""

    NORMAL = "N"
    STOPPED = "F"
    MAINTENANCE = "M"
    SET_VALUE = "S"
    FAULT = "D"
    CALIBRATING = "C"
    OVER_RANGE = "T"
    COMM_FAILURE = "B"
    POWER_FAILURE = "P"  # 2005 only

    @property
    def valid_for_compliance(self) -> bool:
        """Only normal data may prove an exceedance (§8)."""
        return self is DataFlag.NORMAL


class PacketError(Invalid):
    """A frame that cannot be accepted as a packet; ``reason`` goes to quarantine."""

    def __init__(self, reason: RejectReason, field: str, value: object, allowed: str) -> None:
        super().__init__(field, value, allowed)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Framing


@dataclass(frozen=True, slots=True)
class Frame:
    """One delimited packet: the raw bytes, its data segment and its 4-character CRC text."""

    raw: bytes
    data: bytes
    crc: bytes
    anomalies: tuple[Anomaly, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejected:
    """Bytes the framer could not turn into a frame (to be quarantined as they are)."""

    raw: bytes
    reason: RejectReason
    detail: str


def _digits_prefix(buf: bytes | bytearray, start: int, limit: int) -> int:
    """Number of ASCII digits at ``buf[start:]``, at most ``limit``."""
    n = 0
    while n < limit and start + n < len(buf) and 0x30 <= buf[start + n] <= 0x39:
        n += 1
    return n


class Framer:
    """Stream framer for one connection: bytes in, frames and rejected fragments out.

    Algorithm (§1): resynchronise on ``##``; trust the 4-digit length field when the CRLF is
    where it says; otherwise frame on the next CRLF and record the deviation. Everything
    before ``##`` is reported as junk. A packet with no end within ``max_packet`` bytes is
    reported as oversized and dropped, so memory stays bounded whatever the peer sends.

    Parameters
    ----------
    max_packet : int
        Largest frame accepted, ``##`` to CRLF inclusive. Default: what the length field can
        express (9999 data bytes); real packets exceed the standard's 1024 (§12).
    max_buffer : int
        Hard cap on bytes held; must exceed ``max_packet``. ``feed`` processes large inputs in
        slices so the buffer never grows past it.
    """

    def __init__(self, max_packet: int = HJ212_MAX_FRAME, max_buffer: int = 64 * 1024) -> None:
        if max_packet < 16:
            raise Invalid("max_packet", max_packet, "at least 16 bytes")
        if max_buffer <= max_packet:
            raise Invalid("max_buffer", max_buffer, f"greater than max_packet ({max_packet})")
        self.max_packet = max_packet
        self.max_buffer = max_buffer
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a packet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame | Rejected]:
        """Add received bytes; return the frames and rejected fragments now complete."""
        out: list[Frame | Rejected] = []
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            room = self.max_buffer - len(self._buf)
            self._buf += view[pos : pos + room]
            pos += room
            self._drain(out)
        return out

    def flush(self) -> list[Frame | Rejected]:
        """End of stream: frame a last packet that lacks its CRLF, reject any other remainder."""
        out: list[Frame | Rejected] = []
        buf = self._buf
        while buf:
            if not buf.startswith(_HEAD):
                out.append(_junk(bytes(buf)))
                break
            crlf = buf.find(_CRLF, 2)
            if crlf >= 0:
                # A line the length field said was longer: no more bytes will come now.
                del buf[: self._take_line(buf, 0, crlf, out)]
                continue
            raw = bytes(buf)
            frame = self._delimited(raw, len(raw), (Anomaly.NO_CRLF,))
            ndig = _digits_prefix(raw, 2, 4)
            exact = ndig == 4 and int(raw[2:6]) + 10 == len(raw)
            # Accept a CRLF-less tail (HTTP bodies) when its length or its CRC says it is
            # whole; otherwise the peer stopped mid-packet.
            if frame is not None and (exact or _crc_ok(frame.data, frame.crc)):
                out.append(frame)
            else:
                out.append(Rejected(raw, RejectReason.TRUNCATED, "stream ended inside a packet"))
            break
        buf.clear()
        return out

    # -- private steps -----------------------------------------------------------------------

    def _drain(self, out: list[Frame | Rejected]) -> None:
        buf = self._buf
        pos = 0
        while pos < len(buf):
            start = buf.find(_HEAD, pos)
            if start < 0:
                # Keep a trailing '#': it may be the first half of the next "##".
                end = len(buf) - 1 if buf[-1:] == b"#" else len(buf)
                if end > pos:
                    out.append(_junk(bytes(buf[pos:end])))
                pos = end
                break
            if start > pos:
                out.append(_junk(bytes(buf[pos:start])))
                pos = start
            step = self._one(buf, pos, out)
            if step == 0:
                break
            pos += step
        del buf[:pos]

    def _one(self, buf: bytearray, pos: int, out: list[Frame | Rejected]) -> int:
        """Try to take one packet starting at ``buf[pos] == '##'``; return bytes consumed."""
        avail = len(buf) - pos
        ndig = _digits_prefix(buf, pos + 2, 4)
        if avail < 6 and ndig == avail - 2:
            return 0  # the length field itself is not complete yet
        total = 0
        if ndig == 4:
            n = int(buf[pos + 2 : pos + 6])
            total = 6 + n + 4 + 2
            if total > self.max_packet:
                total = 0  # frame on the CRLF instead
            elif avail >= total and buf[pos + total - 2 : pos + total] == _CRLF:
                raw = bytes(buf[pos : pos + total])
                out.append(Frame(raw, raw[6 : 6 + n], raw[6 + n : 6 + n + 4]))
                return total
        crlf = buf.find(_CRLF, pos + 2, pos + self.max_packet)
        if avail < total and (crlf < 0 or not self._line_is_whole(buf, pos, crlf)):
            # Either nothing ends yet, or a CRLF inside the data (log text): wait.
            return 0
        if crlf < 0:
            if avail >= self.max_packet:
                return self._oversized(buf, pos, out)
            return 0
        return self._take_line(buf, pos, crlf, out)

    def _line_is_whole(self, buf: bytearray, pos: int, crlf: int) -> bool:
        # The length field promises more bytes but a CRLF came first. Bytes lost in transit
        # (§12) look like this, and so does a CRLF inside log text. Decide now only when the
        # line's own CRC holds or the next packet has begun, so a sender waiting for its ack
        # is not left hanging.
        if buf[crlf + 2 : crlf + 4] == _HEAD:
            return True
        frame = self._delimited(bytes(buf[pos : crlf + 2]), crlf - pos, ())
        return frame is not None and _crc_ok(frame.data, frame.crc)

    def _take_line(self, buf: bytearray, pos: int, crlf: int, out: list[Frame | Rejected]) -> int:
        line_end = crlf + 2
        inner = buf.find(_HEAD, pos + 2, crlf)
        if inner >= 0:
            # A packet lost its tail and the next one began: resync on the inner "##".
            out.append(
                Rejected(
                    bytes(buf[pos:inner]), RejectReason.TRUNCATED, "a new '##' began before CRLF"
                )
            )
            return inner - pos
        raw = bytes(buf[pos:line_end])
        ndig = _digits_prefix(raw, 2, 4)
        anomaly = Anomaly.LENGTH_MISMATCH if ndig == 4 else Anomaly.LENGTH_GARBLED
        frame = self._delimited(raw, len(raw) - 2, (anomaly,))
        if frame is None:
            out.append(Rejected(raw, RejectReason.TRUNCATED, "too short to hold a CRC"))
        else:
            out.append(frame)
        return line_end - pos

    @staticmethod
    def _delimited(raw: bytes, end: int, anomalies: tuple[Anomaly, ...]) -> Frame | None:
        """Delimiter framing: data after the (possibly garbled) length digits, CRC = last 4."""
        start = 2 + _digits_prefix(raw, 2, 4)
        if end - 4 < start:
            return None
        return Frame(raw, raw[start : end - 4], raw[end - 4 : end], anomalies)

    def _oversized(self, buf: bytearray, pos: int, out: list[Frame | Rejected]) -> int:
        nxt = buf.find(_HEAD, pos + 2)
        end = nxt if nxt >= 0 else len(buf)
        out.append(
            Rejected(
                bytes(buf[pos : pos + self.max_packet]),
                RejectReason.OVERSIZED,
                f"no packet end within {self.max_packet} bytes ({end - pos} bytes dropped)",
            )
        )
        return end - pos


def _junk(raw: bytes) -> Rejected:
    hint = "TLS handshake" if raw[:1] == b"\x16" and raw[1:2] == b"\x03" else "non-protocol bytes"
    return Rejected(raw, RejectReason.JUNK, f"{hint} before '##' ({len(raw)} bytes)")


def _crc_ok(data: bytes, crc_text: bytes) -> bool:
    text = crc_text.decode("latin-1")
    return _HEX4_RE.fullmatch(text) is not None and int(text, 16) == crc16_hj212(data)


def frame_data(data: bytes) -> bytes:
    """Wrap a data segment as ``##LLLL<data>CCCC\\r\\n`` (length in bytes, Appendix A CRC)."""
    if len(data) > 9999:
        raise Invalid("data", f"{len(data)} bytes", "at most 9999 bytes (4-digit length field)")
    return b"##%04d%s%04X\r\n" % (len(data), data, crc16_hj212(data))


# --------------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True, slots=True)
class Reading:
    """All fields of one factor in one packet.

    ``values`` holds numeric fields by suffix (``Rtd``, ``Avg``, ``ZsRtd``, ``Cou``, ``RS`` ...;
    ``None`` when sent empty); ``texts`` holds the rest (``EFlag``, ``SampleTime``, ``Info``,
    ``SN``, and numbers that did not parse). ``flag`` is the raw ``xxxxxx-Flag`` letter.
    """

    mn: str
    cn: str
    data_time: datetime | None
    pollutant: str
    values: Mapping[str, float | None]
    flag: str | None = None
    texts: Mapping[str, str] = field(default_factory=dict)

    @property
    def data_flag(self) -> DataFlag | None:
        """The flag as a known :class:`DataFlag`, ``None`` if absent or vendor-specific."""
        try:
            return DataFlag(self.flag) if self.flag else None
        except ValueError:
            return None

    @property
    def valid_for_compliance(self) -> bool:
        """Normal data or no flag at all (§8): the only values an exceedance may use."""
        return self.flag is None or self.flag == DataFlag.NORMAL.value


@dataclass(frozen=True, slots=True)
class Packet:
    """A parsed, CRC-checked packet. Header values are kept as the device sent them."""

    raw: bytes
    data: str
    crc: int
    qn: str | None
    st: str | None
    cn: str | None
    pw: str | None
    mn: str | None
    flag: int | None
    pnum: int | None
    pno: int | None
    cp: str
    fields: Mapping[str, str]  # plain CP items: DataTime, QnRtn, RtdInterval ...
    readings: tuple[Reading, ...]
    data_time: datetime | None
    dialect: Dialect
    encoding: str
    anomalies: tuple[Anomaly, ...] = ()
    extra_header: Mapping[str, str] = field(default_factory=dict)
    # Set by the receiver, not by the codec.
    received_at: datetime | None = None
    clock_skew: timedelta | None = None

    @property
    def wants_ack(self) -> bool:
        """The Flag's A bit asks for an answer (§4)."""
        return self.flag is not None and bool(self.flag & _ACK_BIT)

    @property
    def is_split(self) -> bool:
        """Part of a split upload: decided by PNUM/PNO presence, not the D bit (§4, §10)."""
        return self.pnum is not None and self.pno is not None and self.pnum > 1

    @property
    def version(self) -> int | None:
        """Flag bits 2-7 (0 = 2005, 1 = 2017, 2 = 2025)."""
        return None if self.flag is None else self.flag >> 2


_HEADER_KEYS = {k.upper(): k for k in ("QN", "ST", "CN", "PW", "MN", "Flag", "PNUM", "PNO")}
_HEADER_EXACT = {k: k for k in _HEADER_KEYS.values()}
# Plain ints for the hot path: IntFlag arithmetic builds enum members on every operation.
_ACK_BIT = int(PacketFlag.ACK)
_SPLIT_BIT = int(PacketFlag.SPLIT)
_DIALECTS = {0: Dialect.HJ212_2005, 1: Dialect.HJ212_2017, 2: Dialect.HJ212_2025}

_TEXT_SUFFIXES = {"Flag", "EFlag", "SampleTime", "Info", "SN"}
_KNOWN_SUFFIXES = {
    s.lower(): s
    for s in (
        "Rtd", "Min", "Avg", "Max", "Cou", "ZsRtd", "ZsMin", "ZsAvg", "ZsMax", "Flag", "EFlag",
        "SampleTime", "RS", "RT", "Ala", "UpValue", "LowValue", "Data", "DayData", "NightData",
        "Info", "SN",
    )
}  # fmt: skip
_SUFFIX_EXACT = {s: s for s in _KNOWN_SUFFIXES.values()}
_KNOWN_PLAIN = {
    k.lower(): k
    for k in (
        "DataTime", "QN", "QnRtn", "ExeRtn", "RtdInterval", "MinInterval", "SystemTime",
        "RestartTime", "BeginTime", "EndTime", "PolId", "InfoId", "OverTime", "ReCount", "NewPW",
        "VaseNo", "CstartTime", "Ctime", "Stime", "AlarmTime", "AlarmType", "HeartbeatTime",
    )
}  # fmt: skip

_CP_RE = re.compile(r"(?:^|[;,\s])CP\s*=", re.IGNORECASE)
_CP_LOOSE_RE = re.compile(r"CP\s*=", re.IGNORECASE)  # "Flag=5CP=" (standard's C.19 typo)
_HEX4_RE = re.compile(r"[0-9A-Fa-f]{4}")
_DT_RE = re.compile(r"^(\d{14})(\d{3})?$")
_ITEM_SEP_RE = re.compile(r"[;,]")


def _decode(data: bytes) -> tuple[str, str, tuple[Anomaly, ...]]:
    try:
        return data.decode("utf-8"), "utf-8", ()
    except UnicodeDecodeError:
        pass
    try:
        # Some loggers send GB2312/GBK log text (§12); GB18030 is their superset.
        return data.decode("gb18030"), "gb18030", (Anomaly.NON_UTF8,)
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1", (Anomaly.NON_UTF8, Anomaly.UNDECODABLE)


def _parse_int(key: str, value: str, allowed: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise PacketError(RejectReason.MALFORMED, key, value, allowed) from None


def parse_datatime(text: str, field_name: str = "DataTime") -> datetime:
    """Parse ``YYYYMMDDhhmmss[zzz]`` Beijing time into an aware UTC datetime.

    Parameters
    ----------
    text : str
        14 digits, or 17 with milliseconds (§12).
    field_name : str
        Named in the error.

    Returns
    -------
    datetime
        Timezone-aware, in UTC.

    Raises
    ------
    PacketError
        With reason ``BAD_DATATIME`` when the text is not a valid timestamp.
    """
    try:
        return _datatime(text)
    except ValueError:
        raise PacketError(
            RejectReason.BAD_DATATIME, field_name, text,
            "YYYYMMDDhhmmss or YYYYMMDDhhmmsszzz, Beijing time",
        ) from None  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _datatime(text: str) -> datetime:
    # Cached: the devices of a site upload the same DataTime (the same minute or hour), and the
    # zone conversion is the costly part. Only successes are cached (lru_cache keeps no errors).
    m = _DT_RE.match(text.strip())
    if m is None:
        raise ValueError(text)
    s = m.group(1)
    local = datetime(
        int(s[0:4]), int(s[4:6]), int(s[6:8]), int(s[8:10]), int(s[10:12]), int(s[12:14]),
        int(m.group(2) or 0) * 1000, tzinfo=DEVICE_TZ,
    )  # fmt: skip
    try:
        return local.astimezone(UTC)
    except OverflowError:  # 0001-01-01 Beijing time is still year 0 in UTC
        raise ValueError(text) from None


def _split_items(cp: str) -> list[str]:
    """Split CP on ';' and ',' except inside ``//log text//`` (§7)."""
    if "//" not in cp:
        return _ITEM_SEP_RE.split(cp)
    items: list[str] = []
    current = ""
    for i, part in enumerate(cp.split("//")):
        if i % 2:  # inside //...//: keep verbatim, delimiters included
            current += "//" + part + "//"
            continue
        pieces = _ITEM_SEP_RE.split(part)
        current += pieces[0]
        for p in pieces[1:]:
            items.append(current)
            current = p
    items.append(current)
    return items


def _header(text: str, anomalies: list[Anomaly]) -> tuple[dict[str, str], dict[str, str]]:
    header: dict[str, str] = {}
    extra: dict[str, str] = {}
    for item in _ITEM_SEP_RE.split(text):
        key, eq, value = item.partition("=")
        if not eq:
            if item.strip():
                anomalies.append(Anomaly.BAD_ITEM)
            continue
        # The usual spelling first; any case and padding on the slow path.
        canon = _HEADER_EXACT.get(key)
        if canon is None:
            key = key.strip()
            if not key:
                anomalies.append(Anomaly.BAD_ITEM)
                continue
            canon = _HEADER_KEYS.get(key.upper())
        target = header if canon else extra
        name = canon or key
        if name in target:
            anomalies.append(Anomaly.DUPLICATE_HEADER)
            continue  # first one wins: a repeated key is more likely noise than a correction
        target[name] = value.strip()
    return header, extra


def _cp_region(text: str, anomalies: list[Anomaly]) -> tuple[str, str]:
    """Split the data segment into (header text, CP content between the && markers)."""
    m = _CP_RE.search(text) or _CP_LOOSE_RE.search(text)
    if m is None:
        anomalies.append(Anomaly.CP_MISSING)
        return text, ""
    head = text[: m.start()]
    rest = text[m.end() :].lstrip()
    if not rest.startswith("&&"):
        anomalies.append(Anomaly.CP_UNTERMINATED)
        return head, rest.strip()
    body = rest[2:]
    close = body.rfind("&&")
    if close < 0:
        anomalies.append(Anomaly.CP_UNTERMINATED)
        return head, body.strip()
    return head, body[:close].strip()


def _cp_items(
    cp: str, anomalies: list[Anomaly]
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    plain: dict[str, str] = {}
    factors: dict[str, dict[str, str]] = {}
    suffixes = _SUFFIX_EXACT
    for item in _split_items(cp):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            if item.strip():
                anomalies.append(Anomaly.BAD_ITEM)
            continue
        value = value.strip()
        code, dash, suffix = key.rpartition("-")
        if dash and code:
            # The usual spelling first; any case and padding on the slow path.
            canon = suffixes.get(suffix)
            if canon is None:
                suffix = suffix.strip()
                canon = _KNOWN_SUFFIXES.get(suffix.lower(), suffix)
            group = factors.get(code)
            if group is None:
                group = factors.setdefault(code.strip(), {})
            old = group.get(canon)
            if old is not None and old != value:
                anomalies.append(Anomaly.DUPLICATE_FIELD)
                continue  # merge groups per factor, never overwrite (§7)
            group[canon] = value
        else:
            name = _KNOWN_PLAIN.get(key.lower(), key)
            plain.setdefault(name, value)
    return plain, factors


def _readings(
    factors: Mapping[str, Mapping[str, str]],
    mn: str,
    cn: str,
    data_time: datetime | None,
    anomalies: list[Anomaly],
) -> tuple[Reading, ...]:
    out = []
    text_suffixes = _TEXT_SUFFIXES
    isfinite = math.isfinite
    for code, group in factors.items():
        values: dict[str, float | None] = {}
        texts: dict[str, str] = {}
        for suffix, value in group.items():
            if suffix in text_suffixes:
                texts[suffix] = value
                continue
            if value == "":
                values[suffix] = None
                continue
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if isfinite(number):
                values[suffix] = number
            else:
                anomalies.append(Anomaly.BAD_NUMBER)
                texts[suffix] = value
        flag = texts.pop("Flag", None)
        out.append(Reading(mn, cn, data_time, code, values, flag or None, texts))
    return tuple(out)


def _dialect(flag: int | None, anomalies: list[Anomaly]) -> Dialect:
    if flag is None:
        return Dialect.HJ212_2005
    dialect = _DIALECTS.get(flag >> 2)
    if dialect is None:
        anomalies.append(Anomaly.UNKNOWN_VERSION)
        return Dialect.UNKNOWN
    return dialect


def parse_packet(
    frame: Frame, *, accept_modbus_swapped: bool = False, received_at: datetime | None = None
) -> Packet:
    """Check a frame's CRC and parse its data segment into a :class:`Packet`.

    Tolerant where the real world deviates (§12): header keys in any order and any case,
    whitespace around keys and values, ``,`` typed for ``;``, a missing closing ``&&``,
    lowercase CRC hex, non-UTF-8 bytes (GB18030, then latin-1), 14- or 17-digit DataTime,
    unknown ST/CN/factor codes kept as sent. Strict where it matters: the CRC.

    Parameters
    ----------
    frame : Frame
        From :class:`Framer`.
    accept_modbus_swapped : bool
        Also accept CRC-16/MODBUS written low byte first (some devices, §2), recorded as an
        anomaly. Meant to be enabled per device.
    received_at : datetime or None
        Timezone-aware receive time, when known: sets ``received_at`` and ``clock_skew`` (see
        :func:`clock_skew`). A receiver passes it so that it need not copy every packet.

    Returns
    -------
    Packet

    Raises
    ------
    PacketError
        ``reason`` is ``NO_CRC``, ``BAD_CRC``, ``MALFORMED`` (Flag/PNUM/PNO not integers,
        PNO outside 1..PNUM) or ``BAD_DATATIME``.
    """
    if received_at is not None and received_at.tzinfo is None:
        raise Invalid("received_at", received_at, "a timezone-aware datetime")
    anomalies: list[Anomaly] = list(frame.anomalies)
    crc_text = frame.crc.decode("latin-1")
    if _HEX4_RE.fullmatch(crc_text) is None:
        raise PacketError(RejectReason.NO_CRC, "CRC", crc_text, "4 hex digits before CRLF")
    sent = int(crc_text, 16)
    computed = crc16_hj212(frame.data)
    if sent != computed:
        if accept_modbus_swapped and sent == _modbus_swapped(frame.data):
            anomalies.append(Anomaly.CRC_MODBUS_SWAPPED)
        else:
            raise PacketError(
                RejectReason.BAD_CRC, "CRC", crc_text, f"{computed:04X} (Appendix A CRC16)"
            )
    if crc_text != crc_text.upper():
        anomalies.append(Anomaly.LOWERCASE_CRC)

    text, encoding, dec_anomalies = _decode(frame.data)
    anomalies.extend(dec_anomalies)
    head_text, cp = _cp_region(text, anomalies)
    header, extra = _header(head_text, anomalies)

    flag = _parse_int("Flag", header["Flag"], "an integer 0-255") if "Flag" in header else None
    if flag is not None and not 0 <= flag <= 255:
        raise PacketError(RejectReason.MALFORMED, "Flag", flag, "an integer 0-255")
    pnum = _parse_int("PNUM", header["PNUM"], "a positive integer") if "PNUM" in header else None
    pno = _parse_int("PNO", header["PNO"], "a positive integer") if "PNO" in header else None
    if (pnum is None) != (pno is None):
        raise PacketError(
            RejectReason.BAD_SPLIT, "PNUM/PNO", f"PNUM={pnum}, PNO={pno}", "both or neither"
        )
    if pnum is not None and pno is not None and not 1 <= pno <= pnum:
        raise PacketError(RejectReason.BAD_SPLIT, "PNO", pno, f"1..PNUM ({pnum})")
    if flag is not None and bool(flag & _SPLIT_BIT) != (pnum is not None):
        anomalies.append(Anomaly.FLAG_SPLIT_MISMATCH)
    dialect = _dialect(flag, anomalies)

    mn = header.get("MN", "")
    cn = header.get("CN", "")
    plain, factors = _cp_items(cp, anomalies)
    data_time = parse_datatime(plain["DataTime"]) if plain.get("DataTime") else None
    readings = _readings(factors, mn, cn, data_time, anomalies)
    return Packet(
        raw=frame.raw,
        data=text,
        crc=sent,
        qn=header.get("QN"),
        st=header.get("ST"),
        cn=header.get("CN"),
        pw=header.get("PW"),
        mn=header.get("MN"),
        flag=flag,
        pnum=pnum,
        pno=pno,
        cp=cp,
        fields=plain,
        readings=readings,
        data_time=data_time,
        dialect=dialect,
        encoding=encoding,
        anomalies=tuple(dict.fromkeys(anomalies)),
        extra_header=extra,
        received_at=received_at,
        clock_skew=None if received_at is None or data_time is None else received_at - data_time,
    )


def clock_skew(packet: Packet, received_at: datetime) -> timedelta | None:
    """``received_at - DataTime``: positive when the device clock is behind (§11).

    Parameters
    ----------
    packet : Packet
    received_at : datetime
        Timezone-aware receive time.

    Returns
    -------
    timedelta or None
        ``None`` when the packet carries no DataTime. For period data (2051/2061/2031) the
        DataTime is the period start, so a skew of about one period is expected.
    """
    if received_at.tzinfo is None:
        raise Invalid("received_at", received_at, "a timezone-aware datetime")
    return None if packet.data_time is None else received_at - packet.data_time


# --------------------------------------------------------------------------------------------
# Split uploads


@dataclass(slots=True)
class _Pending:
    first_seen: float
    pnum: int
    parts: dict[int, Packet]


@dataclass(frozen=True, slots=True)
class Incomplete:
    """A split upload given up on: its parts go to quarantine with ``reason``."""

    parts: tuple[Packet, ...]
    reason: str


class Reassembler:
    """Collect the sub-packets of split uploads (PNUM/PNO, §10) into one packet.

    The standard gives each sub-packet its own QN and repeats DataTime in each, so parts are
    grouped by (MN, CN, PNUM, DataTime); parts without a DataTime fall back to (MN, QN).
    A retransmitted part (same PNO) is ignored. Groups not complete within ``timeout``
    seconds, or pushed out by ``max_pending``, come back from :meth:`expire`.

    Parameters
    ----------
    timeout : float
        Seconds to wait for the remaining parts.
    max_pending : int
        Most incomplete groups held at once (oldest evicted first).
    max_parts : int
        Largest PNUM accepted.
    """

    def __init__(self, timeout: float = 120.0, max_pending: int = 64, max_parts: int = 64) -> None:
        if timeout <= 0:
            raise Invalid("timeout", timeout, "a positive number of seconds")
        if max_pending < 1 or max_parts < 1:
            raise Invalid("max_pending/max_parts", (max_pending, max_parts), "at least 1")
        self.timeout = timeout
        self.max_pending = max_pending
        self.max_parts = max_parts
        self._pending: dict[tuple[str, ...], _Pending] = {}
        self._dropped: list[Incomplete] = []

    @property
    def pending(self) -> int:
        """Incomplete groups held."""
        return len(self._pending)

    def add(self, packet: Packet, now: float) -> Packet | None:
        """Add a packet; return it (or the merged whole) when complete, else ``None``.

        Raises
        ------
        PacketError
            ``BAD_SPLIT`` when PNUM exceeds ``max_parts`` or disagrees within a group.
        """
        if not packet.is_split:
            return packet
        assert packet.pnum is not None and packet.pno is not None  # is_split checked both
        if packet.pnum > self.max_parts:
            raise PacketError(RejectReason.BAD_SPLIT, "PNUM", packet.pnum, f"≤ {self.max_parts}")
        key = self._key(packet)
        group = self._pending.get(key)
        if group is None:
            if len(self._pending) >= self.max_pending:
                oldest = next(iter(self._pending))
                evicted = self._pending.pop(oldest)
                self._dropped.append(
                    Incomplete(_ordered(evicted), f"evicted: more than {self.max_pending} pending")
                )
            group = self._pending[key] = _Pending(now, packet.pnum, {})
        elif group.pnum != packet.pnum:
            raise PacketError(RejectReason.BAD_SPLIT, "PNUM", packet.pnum, f"{group.pnum}")
        group.parts.setdefault(packet.pno, packet)
        if len(group.parts) < group.pnum:
            return None
        del self._pending[key]
        return _merge(_ordered(group))

    def expire(self, now: float) -> list[Incomplete]:
        """Give up on groups older than ``timeout``; also return groups evicted since last call."""
        if not self._pending and not self._dropped:
            return []  # the usual case, asked after every read
        out, self._dropped = self._dropped, []
        for key in [k for k, g in self._pending.items() if now - g.first_seen > self.timeout]:
            group = self._pending.pop(key)
            out.append(Incomplete(_ordered(group), f"timed out after {self.timeout:g} s"))
        return out

    def flush(self) -> list[Incomplete]:
        """Connection closed: every incomplete group."""
        out, self._dropped = self._dropped, []
        out.extend(Incomplete(_ordered(g), "connection closed") for g in self._pending.values())
        self._pending.clear()
        return out

    @staticmethod
    def _key(p: Packet) -> tuple[str, ...]:
        dt = p.fields.get("DataTime")
        if dt:
            return ("dt", p.mn or "", p.cn or "", str(p.pnum), dt)
        return ("qn", p.mn or "", p.qn or "")


def _ordered(group: _Pending) -> tuple[Packet, ...]:
    return tuple(group.parts[k] for k in sorted(group.parts))


def _merge(parts: Sequence[Packet]) -> Packet:
    first = parts[0]
    merged: dict[tuple[str, datetime | None], Reading] = {}
    fields: dict[str, str] = {}
    for p in parts:
        for k, v in p.fields.items():
            fields.setdefault(k, v)
        for r in p.readings:
            key = (r.pollutant, r.data_time)
            old = merged.get(key)
            if old is None:
                merged[key] = r
            else:
                merged[key] = dataclasses.replace(
                    old,
                    values={**r.values, **old.values},
                    texts={**r.texts, **old.texts},
                    flag=old.flag or r.flag,
                )
    anomalies = tuple(dict.fromkeys(a for p in parts for a in p.anomalies))
    return dataclasses.replace(
        first,
        raw=b"".join(p.raw for p in parts),
        data="".join(p.data for p in parts),
        cp=";".join(p.cp for p in parts),
        pno=None,
        fields=fields,
        readings=tuple(merged.values()),
        anomalies=anomalies,
    )


# --------------------------------------------------------------------------------------------
# Building packets and replies


def format_datatime(moment: datetime, *, millis: bool = False) -> str:
    """Aware datetime → ``YYYYMMDDhhmmss[zzz]`` in Beijing time, as devices send it."""
    if moment.tzinfo is None:
        raise Invalid("moment", moment, "a timezone-aware datetime")
    local = moment.astimezone(DEVICE_TZ)
    text = local.strftime("%Y%m%d%H%M%S")
    return text + f"{local.microsecond // 1000:03d}" if millis else text


def format_cp(items: Mapping[str, object]) -> str:
    """Join CP items: ``;`` between factors, ``,`` between fields of one factor (§7).

    ``{"DataTime": "20160801084000", "w01018-Avg": 40.1, "w01018-Flag": "N"}`` gives
    ``DataTime=20160801084000;w01018-Avg=40.1,w01018-Flag=N``. ``None`` values are sent empty.
    """
    groups: dict[str, list[str]] = {}
    for key, value in items.items():
        code, dash, _ = key.rpartition("-")
        text = "" if value is None else str(value)
        groups.setdefault(code if dash else f"\0{key}", []).append(f"{key}={text}")
    return ";".join(",".join(g) for g in groups.values())


def build_packet(
    *,
    cn: str,
    mn: str,
    st: str | None = "32",
    pw: str | None = "123456",
    qn: str | None = None,
    flag: int | None = 4,
    cp: str | Mapping[str, object] = "",
    pnum: int | None = None,
    pno: int | None = None,
) -> bytes:
    """Build a framed packet (``##LLLL … CCCC\\r\\n``); fields set to ``None`` are left out.

    Parameters
    ----------
    cn, mn : str
        Command code and device id.
    st, pw, qn : str or None
        System code, password, request id (17-digit timestamp).
    flag : int or None
        Header Flag; ``None`` for a 2005-style packet without one.
    cp : str or Mapping
        The data area without the ``&&`` markers, or items for :func:`format_cp`.
    pnum, pno : int or None
        Split-upload numbering.

    Returns
    -------
    bytes
    """
    cp_text = cp if isinstance(cp, str) else format_cp(cp)
    parts = [
        f"{k}={v}"
        for k, v in (
            ("QN", qn), ("ST", st), ("CN", cn), ("PW", pw), ("MN", mn), ("Flag", flag),
            ("PNUM", pnum), ("PNO", pno),
        )
        if v is not None
    ]  # fmt: skip
    parts.append(f"CP=&&{cp_text}&&")
    return frame_data(";".join(parts).encode("utf-8"))


# Logger → server notifications are answered with 9013, data uploads with 9014 (§11).
_NOTIFICATIONS = {"1013"}
_ANSWERS = {"9011", "9012", "9013", "9014"}


def build_reply(packet: Packet) -> bytes | None:
    """The answer a packet asks for, framed, or ``None`` when none is due.

    A packet whose Flag has the A bit gets a 9014 data answer (9013 for a 1013 notification),
    with ST=91 and the packet's QN, PW and MN, in the packet's own dialect: the version bits
    are echoed with A cleared (``Flag=4`` for 2017). 2005 devices get the answered QN inside
    CP, as real 2005 loggers do (§11). Answers are never answered, and packets without a Flag
    (most 2005 uploads) expect nothing.

    Parameters
    ----------
    packet : Packet

    Returns
    -------
    bytes or None
    """
    if not packet.wants_ack or packet.cn in _ANSWERS:
        return None
    assert packet.flag is not None  # wants_ack implies a Flag
    version_bits = packet.flag & ~0b11
    answer = "9013" if packet.cn in _NOTIFICATIONS else "9014"
    if packet.qn is not None and packet.pw is not None and packet.dialect is not Dialect.HJ212_2005:
        # What build_packet below gives for these fields, without its generic field handling:
        # one answer per accepted packet.
        data = (f"QN={packet.qn};ST=91;CN={answer};PW={packet.pw};MN={packet.mn or ''};"
                f"Flag={version_bits};CP=&&&&")
        return frame_data(data.encode("utf-8"))
    if packet.dialect is Dialect.HJ212_2005:
        cp = f"QN={packet.qn}" if packet.qn else ""
        return build_packet(
            cn=answer, mn=packet.mn or "", st="91", pw=packet.pw, qn=None, flag=version_bits,
            cp=cp,
        )  # fmt: skip
    return build_packet(
        cn=answer, mn=packet.mn or "", st="91", pw=packet.pw, qn=packet.qn, flag=version_bits
    )
