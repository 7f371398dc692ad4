"""HJ 212 codec: CRC vectors from the standard, framing of hostile streams, tolerant parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import layers.hj212 as hj212
from layers.hj212 import (
    Anomaly,
    DataFlag,
    Dialect,
    Frame,
    Framer,
    PacketError,
    Reassembler,
    Rejected,
    RejectReason,
    build_packet,
    build_reply,
    clock_skew,
    crc16_hj212,
    format_cp,
    frame_data,
    parse_packet,
)

MN = "010000A8900016F000169DC0"
APPENDIX_A = (
    b"QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;"
    b"Flag=5;CP=&&RtdInterval=30&&"
)
# Table C.16 style minute data (10-minute period starting 08:40 Beijing time).
MINUTE_2017 = (
    b"QN=20160801085857223;ST=32;CN=2051;PW=123456;MN=010000A8900016F000169DC0;Flag=5;"
    b"CP=&&DataTime=20160801084000;w00000-Cou=10.5,w00000-Min=16.4,w00000-Avg=17.5,"
    b"w00000-Max=20.1,w00000-Flag=N;w01018-Cou=10.5,w01018-Min=40.1,w01018-Avg=40.1,"
    b"w01018-Max=40.1,w01018-Flag=M&&"
)
# 2005 real-time upload: no QN, no Flag, old codes, 14-char MN, negative value.
REALTIME_2005 = (
    b"ST=32;CN=2011;PW=123456;MN=88888880000001;CP=&&DataTime=20160824003817;"
    b"B01-Rtd=36.91;011-Rtd=23.3,011-Flag=N;060-Rtd=-1.2,060-Flag=D&&"
)


def one(frames: list[Frame | Rejected]) -> Frame:
    assert len(frames) == 1, frames
    frame = frames[0]
    assert isinstance(frame, Frame), frame
    return frame


def reference_crc(data: bytes) -> int:
    """Appendix A as worded: shift the register right 8 bits first, then XOR the byte."""
    reg = 0xFFFF
    for b in data:
        reg = (reg >> 8) ^ b
        for _ in range(8):
            lsb = reg & 1
            reg >>= 1
            if lsb:
                reg ^= 0xA001
    return reg


# -- CRC ---------------------------------------------------------------------------------------


def test_crc_appendix_a_worked_example_is_1c80() -> None:
    assert len(APPENDIX_A) == 101
    assert crc16_hj212(APPENDIX_A) == 0x1C80
    # The first steps of the standard's trace: Q → BC81, QN → 8581, QN= → 7200.
    assert crc16_hj212(b"Q") == 0xBC81
    assert crc16_hj212(b"QN") == 0x8581
    assert crc16_hj212(b"QN=") == 0x7200


@pytest.mark.parametrize(
    ("data", "crc"),
    [
        (b"", 0xFFFF),
        (b"A", 0x7080),
        (b"ST=32", 0x60C0),
        (
            b"QN=20160801085857223;ST=91;CN=9014;PW=123456;MN=010000A8900016F000169DC0;"
            b"Flag=4;CP=&&&&",
            0x3240,
        ),
        (
            b"QN=20160801085000001;ST=91;CN=9014;PW=123456;MN=010000A8900016F000169DC0;"
            b"Flag=4;CP=&&&&",
            0xC241,
        ),
    ],
)
def test_crc_vectors(data: bytes, crc: int) -> None:
    assert crc16_hj212(data) == crc


def test_crc_is_not_modbus() -> None:
    # CRC-16/MODBUS of the Appendix A segment is 0x0759; ours must not be.
    assert crc16_hj212(APPENDIX_A) != 0x0759


@given(st.binary(min_size=1, max_size=300))
@settings(max_examples=300)
def test_crc_table_matches_the_standard_loop_and_low_byte_set(data: bytes) -> None:
    crc = crc16_hj212(data)
    assert crc == reference_crc(data)
    assert crc & 0xFF in {0x00, 0x01, 0x40, 0x41, 0x80, 0x81, 0xC0, 0xC1}


def test_crc_two_bytes_per_step_is_exact_for_every_length_and_buffer_type() -> None:
    # The fast form steps over byte pairs: odd and even lengths, and the last byte, take
    # different paths. Cross-check each length against the standard's loop, and the byte-wise
    # table form kept for big-endian machines.
    data = bytes(range(256)) * 2
    for n in range(len(data) + 1):
        chunk = data[:n]
        expected = reference_crc(chunk)
        assert crc16_hj212(chunk) == expected, n
        assert hj212._crc16_hj212_bytes(chunk) == expected, n
    assert crc16_hj212(b"") == 0xFFFF
    assert crc16_hj212(bytearray(APPENDIX_A)) == crc16_hj212(memoryview(APPENDIX_A)) == 0x1C80


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(hj212, name)

    def counting(data: bytes) -> Any:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(hj212, name, counting)
    return calls


def test_crc_checked_exactly_once_per_packet_and_bad_crcs_still_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    crc_calls = _count_calls(monkeypatch, "crc16_hj212")
    modbus_calls = _count_calls(monkeypatch, "_crc16_modbus")
    good = frame_data(MINUTE_2017)
    bad = good[:-6] + b"%04X\r\n" % (crc16_hj212(MINUTE_2017) ^ 0x0100)
    crc_calls.clear()  # frame_data and the line above computed theirs
    frames = Framer().feed(good + bad)
    assert crc_calls == []  # the framer trusts a consistent length field: no CRC of its own
    parse_packet(frames[0])  # type: ignore[arg-type]
    assert crc_calls == [len(MINUTE_2017)]
    with pytest.raises(PacketError) as err:
        parse_packet(frames[1])  # type: ignore[arg-type]
    assert err.value.reason is RejectReason.BAD_CRC
    assert crc_calls == [len(MINUTE_2017)] * 2
    # The MODBUS variant is only tried for devices allowed to send it.
    assert modbus_calls == []
    with pytest.raises(PacketError):
        parse_packet(frames[1], accept_modbus_swapped=True)  # type: ignore[arg-type]
    assert modbus_calls == [len(MINUTE_2017)]


def test_frame_data_reproduces_the_documented_9014() -> None:
    seg = b"QN=20160801085857223;ST=91;CN=9014;PW=123456;MN=010000A8900016F000169DC0;Flag=4;CP=&&&&"
    assert frame_data(seg) == b"##0087" + seg + b"3240\r\n"


# -- framing -----------------------------------------------------------------------------------


def test_appendix_a_packet_frames_and_parses() -> None:
    frame = one(Framer().feed(b"##0101" + APPENDIX_A + b"1C80\r\n"))
    assert frame.data == APPENDIX_A
    assert frame.crc == b"1C80"
    p = parse_packet(frame)
    assert (p.qn, p.st, p.cn, p.pw, p.mn, p.flag) == (
        "20160801085857223", "32", "1062", "100000", MN, 5,
    )  # fmt: skip
    assert p.fields == {"RtdInterval": "30"}
    assert p.dialect is Dialect.HJ212_2017
    assert p.anomalies == ()


def test_packet_split_over_three_reads() -> None:
    wire = frame_data(MINUTE_2017)
    f = Framer()
    assert f.feed(wire[:3]) == []  # "##0": length field incomplete
    assert f.feed(wire[3:100]) == []
    frame = one(f.feed(wire[100:]))
    assert frame.raw == wire
    assert f.buffered == 0


def test_three_packets_in_one_read() -> None:
    a = frame_data(APPENDIX_A)
    b = frame_data(MINUTE_2017)
    c = frame_data(REALTIME_2005)
    out = Framer().feed(a + b + c)
    assert [x.raw for x in out if isinstance(x, Frame)] == [a, b, c]
    assert len(out) == 3


def test_junk_and_tls_client_hello_before_a_packet() -> None:
    # Start of a TLS 1.2 ClientHello record: handshake, version, length, ClientHello, random.
    tls = bytes.fromhex("16030100c4010000c00303") + bytes(range(0x80, 0xA0))
    http = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    wire = frame_data(APPENDIX_A)
    out = Framer().feed(tls + http + wire)
    assert len(out) == 2
    junk, frame = out
    assert isinstance(junk, Rejected)
    assert junk.reason is RejectReason.JUNK
    assert junk.raw == tls + http
    assert "TLS" in junk.detail
    assert isinstance(frame, Frame)
    assert frame.raw == wire


def test_lone_hash_at_end_of_read_is_kept_for_the_next_read() -> None:
    wire = frame_data(APPENDIX_A)
    f = Framer()
    out = f.feed(b"SSH-2.0-x\r\n#")
    assert [r.raw for r in out if isinstance(r, Rejected)] == [b"SSH-2.0-x\r\n"]
    assert one(f.feed(wire[1:])).raw == wire


def test_wrong_length_field_falls_back_to_crlf_and_keeps_a_valid_crc() -> None:
    crc = b"%04X" % crc16_hj212(APPENDIX_A)
    for length in (b"0099", b"0150"):  # says too few, says too many
        frame = one(Framer().feed(b"##" + length + APPENDIX_A + crc + b"\r\n"))
        assert frame.anomalies == (Anomaly.LENGTH_MISMATCH,)
        assert frame.data == APPENDIX_A
        p = parse_packet(frame)
        assert p.cn == "1062"
        assert Anomaly.LENGTH_MISMATCH in p.anomalies


def test_garbled_length_field_uses_delimiter_framing() -> None:
    frame = one(Framer().feed(b"##81" + APPENDIX_A + b"1C80\r\n"))
    assert frame.anomalies == (Anomaly.LENGTH_GARBLED,)
    assert parse_packet(frame).qn == "20160801085857223"


def test_wrong_length_with_bad_crc_waits_then_resyncs_on_the_next_packet() -> None:
    # Bytes lost in transit: length says 101 but 10 data bytes are missing; CRC fails.
    damaged = b"##0101" + APPENDIX_A[10:] + b"1C80\r\n"
    good = frame_data(MINUTE_2017)
    f = Framer()
    assert f.feed(damaged) == []  # could be a CRLF inside log text: wait for more
    out = f.feed(good)
    assert [type(x) for x in out] == [Frame, Frame]
    first, second = out
    assert isinstance(first, Frame) and isinstance(second, Frame)
    with pytest.raises(PacketError) as err:
        parse_packet(first)
    assert err.value.reason is RejectReason.BAD_CRC
    assert second.raw == good


def test_truncated_packet_then_a_new_one_is_rejected_and_resynced() -> None:
    good = frame_data(APPENDIX_A)
    out = Framer().feed(b"##0087QN=2016" + good)
    assert isinstance(out[0], Rejected)
    assert out[0].reason is RejectReason.TRUNCATED
    assert out[0].raw == b"##0087QN=2016"
    assert isinstance(out[1], Frame) and out[1].raw == good


def test_oversized_packet_is_rejected_and_buffer_stays_capped() -> None:
    f = Framer(max_packet=200, max_buffer=400)
    good = frame_data(APPENDIX_A)
    results: list[Frame | Rejected] = []
    results += f.feed(b"##9999QN=" + b"x" * 150)
    assert f.buffered <= 400
    results += f.feed(b"y" * 5000)  # never a CRLF: must not grow without bound
    assert f.buffered <= 200
    results += f.feed(good)
    rejected = [r for r in results if isinstance(r, Rejected)]
    assert rejected[0].reason is RejectReason.OVERSIZED
    assert len(rejected[0].raw) == 200
    frames = [r for r in results if isinstance(r, Frame)]
    assert [fr.raw for fr in frames] == [good]


def test_flush_accepts_a_last_packet_without_crlf() -> None:
    f = Framer()
    assert f.feed(frame_data(APPENDIX_A)[:-2]) == []
    frame = one(f.flush())
    assert frame.anomalies == (Anomaly.NO_CRLF,)
    assert parse_packet(frame).cn == "1062"
    assert f.flush() == []


def test_framer_rejects_bad_caps() -> None:
    with pytest.raises(ValueError, match="max_buffer"):
        Framer(max_packet=100, max_buffer=100)


@given(
    st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=60),
)
@settings(max_examples=100)
def test_any_chunking_gives_the_same_result_as_one_read(cuts: list[int]) -> None:
    stream = (
        b"\x16\x03\x01junk"
        + frame_data(APPENDIX_A)
        + frame_data(MINUTE_2017)
        + b"##81"
        + APPENDIX_A
        + b"1C80\r\n"
        + frame_data(REALTIME_2005)
    )
    whole = Framer().feed(stream)
    f = Framer()
    pieces: list[Frame | Rejected] = []
    pos = 0
    for n in cuts:
        pieces += f.feed(stream[pos : pos + n])
        pos += n
    pieces += f.feed(stream[pos:])
    # Junk may be reported in several fragments; frames must be identical.
    assert [x for x in pieces if isinstance(x, Frame)] == [x for x in whole if isinstance(x, Frame)]
    junk = b"".join(x.raw for x in pieces if isinstance(x, Rejected))
    assert junk == b"\x16\x03\x01junk"


# -- parsing -----------------------------------------------------------------------------------


def test_2017_minute_data_readings() -> None:
    p = parse_packet(one(Framer().feed(frame_data(MINUTE_2017))))
    assert p.dialect is Dialect.HJ212_2017
    # 08:40 Beijing = 00:40 UTC.
    assert p.data_time == datetime(2016, 8, 1, 0, 40, tzinfo=UTC)
    by = {r.pollutant: r for r in p.readings}
    assert set(by) == {"w00000", "w01018"}
    cod = by["w01018"]
    assert (cod.mn, cod.cn) == (MN, "2051")
    assert cod.values == {"Cou": 10.5, "Min": 40.1, "Avg": 40.1, "Max": 40.1}
    assert cod.flag == "M"
    assert cod.data_flag is DataFlag.MAINTENANCE
    assert not cod.valid_for_compliance
    assert by["w00000"].valid_for_compliance


def test_2005_packet_without_qn_or_flag() -> None:
    p = parse_packet(one(Framer().feed(frame_data(REALTIME_2005))))
    assert p.dialect is Dialect.HJ212_2005
    assert (p.qn, p.flag, p.mn, p.cn) == (None, None, "88888880000001", "2011")
    by = {r.pollutant: r for r in p.readings}
    assert by["B01"].values == {"Rtd": 36.91}
    assert by["B01"].flag is None
    assert by["060"].values == {"Rtd": -1.2}
    assert by["060"].data_flag is DataFlag.FAULT
    assert build_reply(p) is None  # 2005 devices without a Flag expect no answer


def test_wrong_crc_raises_with_reason() -> None:
    with pytest.raises(PacketError) as err:
        parse_packet(one(Framer().feed(b"##0101" + APPENDIX_A + b"1C08\r\n")))  # the typo
    assert err.value.reason is RejectReason.BAD_CRC
    assert "1C80" in str(err.value)
    with pytest.raises(PacketError) as err:
        parse_packet(one(Framer().feed(b"##0101" + APPENDIX_A + b"zz&&\r\n")))
    assert err.value.reason is RejectReason.NO_CRC


def test_lowercase_crc_accepted_and_recorded() -> None:
    p = parse_packet(one(Framer().feed(b"##0101" + APPENDIX_A + b"1c80\r\n")))
    assert Anomaly.LOWERCASE_CRC in p.anomalies


def test_modbus_swapped_crc_only_when_allowed() -> None:
    seg = b"ST=32;CN=2011;PW=123456;MN=4201003;CP=&&DataTime=20160801084000;a21026-Rtd=1&&"
    # CRC-16/MODBUS (0xA001 applied to reg ^ byte), written low byte first.
    reg = 0xFFFF
    for b in seg:
        reg ^= b
        for _ in range(8):
            reg = (reg >> 1) ^ 0xA001 if reg & 1 else reg >> 1
    wire = b"##%04d%s%02X%02X\r\n" % (len(seg), seg, reg & 0xFF, reg >> 8)
    frame = one(Framer().feed(wire))
    with pytest.raises(PacketError):
        parse_packet(frame)
    p = parse_packet(frame, accept_modbus_swapped=True)
    assert Anomaly.CRC_MODBUS_SWAPPED in p.anomalies


def test_tolerant_keys_order_case_spaces_and_missing_closing_ampersands() -> None:
    seg = (
        b"mn=DUST-01 ; cn=2011;QN=20240101120000123;st=39;pw=1;flag=4;"
        b"CP=&& DataTime=20240101120000 ;a34001-rtd = 92 , a34001-Flag=N;a34004-Rtd=,LA-td=3"
    )
    p = parse_packet(one(Framer().feed(frame_data(seg))))
    assert (p.mn, p.cn, p.st, p.flag) == ("DUST-01", "2011", "39", 4)
    assert Anomaly.CP_UNTERMINATED in p.anomalies
    by = {r.pollutant: r for r in p.readings}
    assert by["a34001"].values == {"Rtd": 92.0}
    assert by["a34001"].flag == "N"
    assert by["a34004"].values == {"Rtd": None}  # sent empty
    assert by["LA"].values == {"td": 3.0}  # typo kept, not dropped
    assert p.data_time == datetime(2024, 1, 1, 4, 0, tzinfo=UTC)


def test_flag_glued_to_cp_as_in_the_standards_c19_typo() -> None:
    seg = b"QN=20160801085857223;ST=32;CN=2011;PW=123456;MN=X;Flag=5CP=&&DataTime=20160801085800&&"
    p = parse_packet(one(Framer().feed(frame_data(seg))))
    assert p.flag == 5
    assert p.fields == {"DataTime": "20160801085800"}


def test_non_utf8_bytes_decode_without_crashing() -> None:
    gbk = "正常运行".encode("gbk")
    seg = b"QN=1;ST=32;CN=3020;PW=1;MN=X;Flag=4;CP=&&DataTime=20240101000000;i12001-Info=//" + gbk
    seg += b"; a=b//&&"
    p = parse_packet(one(Framer().feed(frame_data(seg))))
    assert p.encoding == "gb18030"
    assert Anomaly.NON_UTF8 in p.anomalies
    (info,) = p.readings
    assert info.texts == {"Info": "//正常运行; a=b//"}  # ';' inside //log// is not a separator

    seg = b"QN=1;ST=32;CN=2011;PW=1;MN=X\xff;Flag=4;CP=&&a21026-Rtd=1&&"
    p = parse_packet(one(Framer().feed(frame_data(seg))))
    assert p.encoding == "latin-1"
    assert p.mn == "X\xff"
    assert p.readings[0].values == {"Rtd": 1.0}


def test_datatime_with_milliseconds_and_bad_datatime() -> None:
    seg = b"QN=1;ST=32;CN=2011;PW=1;MN=X;Flag=4;CP=&&DataTime=20160801084000500;a21026-Rtd=1&&"
    p = parse_packet(one(Framer().feed(frame_data(seg))))
    assert p.data_time == datetime(2016, 8, 1, 0, 40, 0, 500000, tzinfo=UTC)
    bad = seg.replace(b"20160801084000500", b"20161301084000")
    with pytest.raises(PacketError) as err:
        parse_packet(one(Framer().feed(frame_data(bad))))
    assert err.value.reason is RejectReason.BAD_DATATIME
    assert "DataTime" in str(err.value)


def test_duplicate_factor_groups_merge_without_overwriting() -> None:
    seg = (
        b"ST=31;CN=2011;PW=1;MN=X;CP=&&DataTime=20160801084000;"
        b"01-Rtd=5,01-Flag=N;01-ZsRtd=7,01-Flag=D&&"
    )
    p = parse_packet(one(Framer().feed(frame_data(seg))))
    (r,) = p.readings
    assert r.values == {"Rtd": 5.0, "ZsRtd": 7.0}
    assert r.flag == "N"  # first wins
    assert Anomaly.DUPLICATE_FIELD in p.anomalies


def test_receive_time_given_to_the_parser_fills_in_clock_skew() -> None:
    frame = one(Framer().feed(frame_data(MINUTE_2017)))
    received = datetime(2016, 8, 1, 0, 52, 30, tzinfo=UTC)
    p = parse_packet(frame, received_at=received)
    assert p.received_at == received
    assert p.clock_skew == clock_skew(p, received) == timedelta(minutes=12, seconds=30)
    bare = parse_packet(frame)
    assert (bare.received_at, bare.clock_skew) == (None, None)
    no_time = parse_packet(one(Framer().feed(frame_data(APPENDIX_A))), received_at=received)
    assert (no_time.received_at, no_time.clock_skew) == (received, None)
    with pytest.raises(ValueError, match="received_at"):
        parse_packet(frame, received_at=datetime(2016, 8, 1))


def test_datatime_parsing_is_cached_but_errors_are_not() -> None:
    seg = b"QN=1;ST=32;CN=2011;PW=1;MN=X;Flag=4;CP=&&DataTime=20160801084000;a21026-Rtd=1&&"
    first = parse_packet(one(Framer().feed(frame_data(seg))))
    again = parse_packet(one(Framer().feed(frame_data(seg))))
    assert first.data_time == again.data_time == datetime(2016, 8, 1, 0, 40, tzinfo=UTC)
    for wrong in (b"20160801086000", b"00010101000000"):  # minute 60; a UTC time before year 1
        bad = seg.replace(b"20160801084000", wrong)
        for _ in range(2):  # a failure is not remembered as a value
            with pytest.raises(PacketError) as err:
                parse_packet(one(Framer().feed(frame_data(bad))))
            assert err.value.reason is RejectReason.BAD_DATATIME
    with pytest.raises(PacketError, match="SystemTime"):
        hj212.parse_datatime("2016", "SystemTime")


def test_padded_and_recased_suffixes_and_factor_codes_join_their_group() -> None:
    seg = (
        b"QN=1;ST=32;CN=2011;PW=1;MN=X;Flag=4;CP=&&DataTime=20160801084000;"
        b"a21026-Rtd=1,a21026 - ZSRTD =2, a21026-flag=N;a21026 -Avg=3&&"
    )
    (r,) = parse_packet(one(Framer().feed(frame_data(seg)))).readings
    assert r.pollutant == "a21026"
    assert r.values == {"Rtd": 1.0, "ZsRtd": 2.0, "Avg": 3.0}
    assert r.flag == "N"


def test_clock_skew() -> None:
    p = parse_packet(one(Framer().feed(frame_data(MINUTE_2017))))
    received = datetime(2016, 8, 1, 0, 52, 30, tzinfo=UTC)
    assert clock_skew(p, received) == timedelta(minutes=12, seconds=30)
    with pytest.raises(ValueError, match="received_at"):
        clock_skew(p, datetime(2016, 8, 1))


# -- replies and building ----------------------------------------------------------------------


def test_9014_reply_for_an_ack_request() -> None:
    seg = (
        b"QN=20160801085857223;ST=32;CN=2051;PW=123456;MN=010000A8900016F000169DC0;Flag=5;"
        b"CP=&&DataTime=20160801084000;w01018-Avg=40.1&&"
    )
    p = parse_packet(one(Framer().feed(frame_data(seg))))
    assert build_reply(p) == (
        b"##0087QN=20160801085857223;ST=91;CN=9014;PW=123456;"
        b"MN=010000A8900016F000169DC0;Flag=4;CP=&&&&3240\r\n"
    )
    no_ack = parse_packet(one(Framer().feed(frame_data(seg.replace(b"Flag=5", b"Flag=4")))))
    assert build_reply(no_ack) is None


def test_9013_for_time_calibration_and_none_for_answers() -> None:
    seg = b"QN=20160801085857223;ST=32;CN=1013;PW=123456;MN=010000A8900016F000169DC0;Flag=5;CP=&&&&"
    p = parse_packet(one(Framer().feed(frame_data(seg))))
    assert build_reply(p) == (
        b"##0087QN=20160801085857223;ST=91;CN=9013;PW=123456;"
        b"MN=010000A8900016F000169DC0;Flag=4;CP=&&&&2A80\r\n"
    )
    answer = seg.replace(b"CN=1013", b"CN=9011")
    assert build_reply(parse_packet(one(Framer().feed(frame_data(answer))))) is None


@pytest.mark.parametrize("qn", ["20160801085857223", None])
@pytest.mark.parametrize("pw", ["123456", None])
@pytest.mark.parametrize("flag", [5, 7, 9])
def test_reply_is_what_build_packet_gives(qn: str | None, pw: str | None, flag: int) -> None:
    p = parse_packet(one(Framer().feed(build_packet(cn="2051", mn="M-1", qn=qn, pw=pw, flag=flag, cp="a-Rtd=1"))))
    assert build_reply(p) == build_packet(cn="9014", mn="M-1", st="91", qn=qn, pw=pw, flag=flag & ~3)


def test_2005_reply_carries_qn_inside_cp() -> None:
    seg = b"QN=20160824000504006;ST=32;CN=2011;PW=123456;MN=88888880000001;Flag=1;CP=&&&&"
    reply = build_reply(parse_packet(one(Framer().feed(frame_data(seg)))))
    assert reply is not None
    data = b"ST=91;CN=9014;PW=123456;MN=88888880000001;Flag=0;CP=&&QN=20160824000504006&&"
    assert reply == frame_data(data)


def test_build_packet_round_trip() -> None:
    wire = build_packet(
        cn="2051",
        mn="SITE-7",
        st="39",
        qn="20240101120000000",
        flag=5,
        cp={"DataTime": "20240101120000", "a34001-Avg": 80.5, "a34001-Flag": "N"},
    )
    assert wire.endswith(b"\r\n") and wire.startswith(b"##")
    assert format_cp({"DataTime": "1", "a-Rtd": 1, "a-Flag": "N", "b-Rtd": None}) == (
        "DataTime=1;a-Rtd=1,a-Flag=N;b-Rtd="
    )
    p = parse_packet(one(Framer().feed(wire)))
    assert (p.cn, p.mn, p.st, p.flag) == ("2051", "SITE-7", "39", 5)
    assert p.readings[0].values == {"Avg": 80.5}


# -- split uploads -----------------------------------------------------------------------------


def _part(pno: int, qn: str, cp: str, pnum: int = 2) -> bytes:
    return build_packet(cn="2061", mn=MN, qn=qn, flag=7, pnum=pnum, pno=pno, cp=cp)


def test_split_upload_reassembled_by_mn_cn_datatime() -> None:
    # Each sub-packet has its own QN, as in the standard's C.49/C.50.
    p1 = parse_packet(
        one(Framer().feed(_part(1, "20160801085857534", "DataTime=20160801080000;w00000-Cou=63.0")))
    )
    p2 = parse_packet(
        one(
            Framer().feed(
                _part(
                    2, "20160801085857535", "DataTime=20160801080000;w01018-Cou=63.0,w01018-Avg=2"
                )
            )
        )
    )
    assert p1.is_split and p2.is_split
    r = Reassembler()
    assert r.add(p2, now=0.0) is None  # out of order
    assert r.add(p2, now=1.0) is None  # retransmission ignored
    whole = r.add(p1, now=2.0)
    assert whole is not None
    assert r.pending == 0
    assert {x.pollutant: dict(x.values) for x in whole.readings} == {
        "w00000": {"Cou": 63.0},
        "w01018": {"Cou": 63.0, "Avg": 2.0},
    }
    assert whole.raw.count(b"##") == 2
    # Each sub-packet is answered with its own QN.
    reply = build_reply(p2)
    assert reply is not None and b"QN=20160801085857535;" in reply


def test_split_upload_timeout_and_bad_pno() -> None:
    p1 = parse_packet(one(Framer().feed(_part(1, "1", "DataTime=20160801080000;a-Rtd=1"))))
    r = Reassembler(timeout=10)
    assert r.add(p1, now=0.0) is None
    assert r.expire(now=5.0) == []
    (lost,) = r.expire(now=11.0)
    assert lost.parts == (p1,)
    assert "timed out" in lost.reason
    with pytest.raises(PacketError) as err:
        parse_packet(one(Framer().feed(_part(3, "1", "a-Rtd=1"))))  # PNO 3 of 2
    assert err.value.reason is RejectReason.BAD_SPLIT


def test_flag_7_without_pnum_is_not_split() -> None:
    seg = b"QN=1;ST=32;CN=2011;PW=1;MN=X;Flag=7;CP=&&DataTime=20160801080000;a-Rtd=1&&"
    p = parse_packet(one(Framer().feed(frame_data(seg))))
    assert not p.is_split
    assert Anomaly.FLAG_SPLIT_MISMATCH in p.anomalies
    assert Reassembler().add(p, now=0.0) is p
