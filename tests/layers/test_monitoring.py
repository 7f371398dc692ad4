"""Monitoring on both backends: points, idempotent readings, quarantine, episodes → leads,
the data-missing alarm and the ranking."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from layers import audit, monitoring
from layers.errors import Invalid
from layers.exceedance import parse_limits
from layers.hj212 import Framer, Packet, build_packet, clock_skew, format_datatime, parse_packet
from layers.models import AuditEvent, Lead, MonitoringPoint
from layers.monitoring_store import MonitoringEpisode, MonitoringLink, MonitoringQuarantine, MonitoringReading
from tests.conftest import NOW, Db

MN = "010000A8900016F000169DC0"
T0 = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)
LIMITS = {"a34001": {"limit": 100, "unit": "ug/m3", "period": "minute", "consecutive": 3}}


def add_point(db: Db, mn: str = MN, lon: float = 117.05, lat: float = 34.02, **kw: Any) -> None:
    item = monitoring.PointIn(mn=mn, name=kw.pop("name", "工地一号"), lon=lon, lat=lat,
                              enterprise=kw.pop("enterprise", "某建设公司"), kind=kw.pop("kind", "dust"),
                              limits=parse_limits(kw.pop("limits", LIMITS)), **kw)
    with db.uow() as s:
        monitoring.upsert_points(s, [item], actor="test", now=NOW)


def wire(i: int, value: float, *, mn: str = MN, flag: str = "N", cn: str = "2051", ack: bool = True) -> bytes:
    moment = T0 + timedelta(minutes=i)
    return build_packet(cn=cn, st="39", mn=mn, qn=format_datatime(moment, millis=True), flag=5 if ack else 4,
                        cp={"DataTime": format_datatime(moment), "a34001-Avg": value, "a34001-Flag": flag,
                            "a34004-Avg": 30, "a34004-Flag": "N"})


def packet(raw: bytes, received_at: datetime) -> Packet:
    frames = Framer().feed(raw)
    p = parse_packet(frames[0])  # type: ignore[arg-type]  # a Frame, not Rejected, for a good packet
    return dataclasses.replace(p, received_at=received_at, clock_skew=clock_skew(p, received_at))


def ingest(db: Db, values: list[float], *, start: int = 0, flags: list[str] | None = None,
           mn: str = MN, now: datetime | None = None) -> monitoring.IngestResult:
    items: list[monitoring.IngestItem] = []
    for k, v in enumerate(values):
        i = start + k
        at = T0 + timedelta(minutes=i + 1, seconds=5)
        items.append(monitoring.Accepted(packet(wire(i, v, mn=mn, flag=(flags or ["N"] * len(values))[k]), at),
                                         at, "127.0.0.1:5000"))
    return monitoring.store_items(db.sessions, items, now=now or T0 + timedelta(minutes=start + len(values) + 1))


def count(db: Db, model: Any, *where: Any) -> int:
    with db.uow() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_point_import_assigns_routes_and_reports_bad_rows(seeded: Db, tmp_path: Path) -> None:
    f = tmp_path / "points.csv"
    f.write_text(
        "mn,name,enterprise,kind,lon,lat,datum,limits,a34002.limit,a34002.period\n"
        f'{MN},工地一号,某公司,dust,117.05,34.02,wgs84,'
        '"{""a34001"": {""limit"": 100, ""period"": ""minute""}}",150,hour\n'
        "MN2,二号,,outlet,117.15,34.07,,,,\n"
        "MN3,坏点,,rocket,117.1,34.0,,,,\n"
        "MN4,坏限值,,dust,117.1,34.0,,,abc,hour\n"
        "MN5,坏坐标,,dust,,34.0,,,,\n",
        encoding="utf-8")
    summary = monitoring.import_points(seeded.uow, f, actor="test", now=NOW)
    assert (summary.created, summary.existing) == (2, 0)
    assert [(e.row, e.field) for e in summary.errors] == [(4, "kind"), (5, "limits.a34002.limit"), (6, "lon")]
    assert summary.error_report is not None and summary.error_report.exists()
    with seeded.uow() as s:
        p = s.scalar(select(MonitoringPoint).where(MonitoringPoint.mn == MN))
        assert p is not None
        assert (p.county_code, p.township_code, p.body_code, p.assign_method) == \
            ("320001", "320001001", "EEB", "inside")
        assert p.limits["a34001"]["period"] == "minute" and p.limits["a34002"]["limit"] == 150
        p2 = s.scalar(select(MonitoringPoint).where(MonitoringPoint.mn == "MN2"))
        assert p2 is not None and p2.township_code == "320002002"
    again = monitoring.import_points(seeded.uow, f, actor="test", now=NOW)
    assert (again.created, again.existing) == (0, 2)


def test_gcj02_point_is_converted_before_assignment(seeded: Db) -> None:
    from geo import crs as gcrs

    # A WGS84 point just west of the county edge lon=117.10, given in GCJ-02.
    glon, glat = gcrs.wgs84_to_gcj02(117.098, 34.02)
    add_point(seeded, "GCJ1", lon=float(glon), lat=float(glat), datum="gcj02")
    with seeded.uow() as s:
        p = s.scalar(select(MonitoringPoint).where(MonitoringPoint.mn == "GCJ1"))
        assert p is not None and p.county_code == "320001" and p.orig_datum == "gcj02"


def test_same_packet_twice_is_one_row_and_skew_is_recorded(seeded: Db) -> None:
    add_point(seeded)
    first = ingest(seeded, [50])
    second = ingest(seeded, [50])
    assert (first.readings_new, first.readings_duplicate) == (2, 0)
    assert (second.readings_new, second.readings_duplicate) == (0, 2)
    assert count(seeded, MonitoringReading) == 2
    with seeded.uow() as s:
        link = s.get(MonitoringLink, MN)
        assert link is not None and link.packets == 2 and link.last_peer == "127.0.0.1:5000"
        assert link.last_skew_s == pytest.approx(65.0)
        r = s.scalar(select(MonitoringReading).where(MonitoringReading.pollutant == "a34001"))
        assert r is not None and r.value == 50 and r.flag == "N" and r.skew_s == pytest.approx(65.0)
        assert r.data_time == T0


def test_duplicates_within_a_batch_and_against_stored_rows_are_stored_once(seeded: Db) -> None:
    """The set-based insert: each key once, the first copy kept, only new readings judged."""
    add_point(seeded)
    add_point(seeded, mn="MN2", name="二号")

    def item(i: int, value: float, *, mn: str = MN, late: int = 0) -> monitoring.Accepted:
        at = T0 + timedelta(minutes=i + 1, seconds=5 + late)
        return monitoring.Accepted(packet(wire(i, value, mn=mn), at), at, f"10.0.0.{late}:1")

    # Minute 0 twice (a retransmission inside the batch), minute 1, and MN2's minute 0.
    first = monitoring.store_items(seeded.sessions, [item(0, 120), item(1, 130), item(0, 120, late=30),
                                                    item(0, 10, mn="MN2")], now=T0 + timedelta(minutes=3))
    assert (first.packets, first.readings_new, first.readings_duplicate) == (4, 6, 2)
    # Two values over the limit so far: had the repeat been judged too, 3 in a row would open.
    assert first.episodes_opened == 0
    # Minute 1 again (stored already), minute 2 twice: one new reading pair, the episode opens.
    second = monitoring.store_items(seeded.sessions, [item(1, 130, late=60), item(2, 110), item(2, 110, late=9)],
                                    now=T0 + timedelta(minutes=4))
    assert (second.readings_new, second.readings_duplicate, second.episodes_opened) == (2, 4, 1)
    with seeded.uow() as s:
        keys = s.execute(select(MonitoringReading.mn, MonitoringReading.cn, MonitoringReading.data_time,
                                MonitoringReading.pollutant, func.count())
                         .group_by(MonitoringReading.mn, MonitoringReading.cn, MonitoringReading.data_time,
                                   MonitoringReading.pollutant)).all()
        assert len(keys) == 8 and {k[-1] for k in keys} == {1}
        # Stored DataTimes compare equal to bound ones on both backends (SQLite keeps text).
        at0 = s.scalars(select(MonitoringReading).where(MonitoringReading.data_time == T0,
                                                        MonitoringReading.mn == MN)).all()
        assert sorted(r.pollutant for r in at0) == ["a34001", "a34004"]
        tsp = next(r for r in at0 if r.pollutant == "a34001")
        # The first copy is the one kept: received 65 s after DataTime, from peer .0.
        assert tsp.received_at == T0 + timedelta(minutes=1, seconds=5) and tsp.skew_s == pytest.approx(65.0)
        assert (tsp.value, tsp.flag, tsp.fields) == (120, "N", {"Avg": 120.0})
        link = s.get(MonitoringLink, MN)
        assert link is not None and (link.packets, link.readings) == (6, 12)
        # The latest receipt (minute 2 resent 9 s late, at 3:14) beats minute 1 resent 60 s late (3:05).
        assert link.last_peer == "10.0.0.9:1" and link.last_data_time == T0 + timedelta(minutes=2)
        other = s.get(MonitoringLink, "MN2")
        assert other is not None and (other.packets, other.last_skew_s) == (1, pytest.approx(65.0))
    ep, _ = lead_of(seeded)
    assert (ep.count, ep.max_value, ep.started_at) == (3, 130, T0)


def test_texts_empty_values_and_cn_variants_round_trip(seeded: Db) -> None:
    add_point(seeded)
    at = T0 + timedelta(minutes=1)
    raw = build_packet(cn="2011", st="39", mn=MN, qn=format_datatime(T0, millis=True), flag=4,
                       cp={"DataTime": format_datatime(T0), "a34001-Rtd": "", "a34001-ZsRtd": 77.5,
                           "a34001-Flag": "M", "a34001-EFlag": "E1", "a34004-Rtd": 12})
    res = monitoring.store_items(seeded.sessions, [monitoring.Accepted(packet(raw, at), at, "p")], now=at)
    assert res.readings_new == 2
    with seeded.uow() as s:
        rows = {r.pollutant: r for r in s.scalars(select(MonitoringReading))}
    # Real-time data: the headline is Rtd, else the converted ZsRtd; texts kept apart.
    assert rows["a34001"].value == 77.5 and rows["a34001"].flag == "M" and rows["a34001"].cn == "2011"
    assert rows["a34001"].fields == {"Rtd": None, "ZsRtd": 77.5, "texts": {"EFlag": "E1"}}
    assert rows["a34004"].value == 12 and rows["a34004"].flag is None


def test_unknown_mn_and_dropped_bytes_are_quarantined_with_raw_bytes(seeded: Db) -> None:
    add_point(seeded)
    bad_crc = wire(0, 50)[:-6] + b"0000\r\n"
    unknown = wire(0, 50, mn="NOSUCHDEVICE")
    at = T0 + timedelta(minutes=1)
    items: list[monitoring.IngestItem] = [
        monitoring.Dropped(bad_crc, "bad_crc: CRC 0000 does not match", at, "10.0.0.1:1"),
        monitoring.Accepted(packet(unknown, at), at, "10.0.0.2:2"),
    ]
    res = monitoring.store_items(seeded.sessions, items, now=at)
    assert res.quarantined == 2 and res.readings_new == 0
    with seeded.uow() as s:
        rows = {q.kind: q for q in s.scalars(select(MonitoringQuarantine))}
    assert set(rows) == {"bad_crc", "unknown_mn"}
    assert rows["bad_crc"].raw == bad_crc and rows["bad_crc"].mn == MN and rows["bad_crc"].peer == "10.0.0.1:1"
    assert rows["unknown_mn"].raw == unknown and "NOSUCHDEVICE" in rows["unknown_mn"].reason
    assert count(seeded, MonitoringReading) == 0


def test_quarantine_keeps_binary_junk_verbatim_even_with_nul_in_its_text(seeded: Db) -> None:
    # Several rows in one statement; raw bytes of every value 0-255 come back exactly. NUL in the
    # text columns (reason, the MN guessed from the bytes, peer) would make PostgreSQL refuse the
    # row and so lose the bytes: it is replaced there, and only there.
    at = T0 + timedelta(minutes=1)
    junk = [bytes(range(256)), b"\x16\x03\x01##0100MN=\x00\xff\xfeAB;CP=&&\x00&&1234\r\n", b""]
    items: list[monitoring.IngestItem] = [
        monitoring.Dropped(raw, f"junk: sample {k}\x00", at, f"10.0.0.{k}:1\x00") for k, raw in enumerate(junk)]
    res = monitoring.store_items(seeded.sessions, items, now=at)
    assert res.quarantined == 3
    with seeded.uow() as s:
        rows = list(s.scalars(select(MonitoringQuarantine).order_by(MonitoringQuarantine.id)))
    assert [q.raw for q in rows] == junk
    assert [q.size for q in rows] == [len(j) for j in junk]
    assert [q.reason for q in rows] == [f"junk: sample {k}\ufffd" for k in range(3)]
    assert [q.peer for q in rows] == [f"10.0.0.{k}:1\ufffd" for k in range(3)]
    assert rows[1].mn == "\ufffd\ufffd\ufffdAB" and rows[0].mn is None
    assert {q.kind for q in rows} == {"junk"} and all(q.received_at == at for q in rows)


def lead_of(db: Db, kind: str = "exceedance") -> tuple[MonitoringEpisode, Lead]:
    with db.uow() as s:
        eps = list(s.scalars(select(MonitoringEpisode).where(MonitoringEpisode.kind == kind)))
        assert len(eps) == 1, eps
        lead = s.get(Lead, eps[0].lead_id)
        assert lead is not None
        return eps[0], lead


def test_episode_opens_updates_and_closes_exactly_one_lead(seeded: Db) -> None:
    add_point(seeded)
    res = ingest(seeded, [120, 130])
    assert res.episodes_opened == 0 and count(seeded, Lead) == 0
    res = ingest(seeded, [110], start=2)
    assert res.episodes_opened == 1 and len(res.leads_created) == 1
    ep, lead = lead_of(seeded)
    assert (lead.channel, lead.category_code, lead.body_code) == ("monitoring", "exceedance", "EEB")
    assert (lead.county_code, lead.township_code, lead.assign_method) == ("320001", "320001001", "inside")
    assert lead.external_id == f"{MN}:a34001:20260601T000000Z"
    assert lead.reported_at == T0 and lead.orig_datum == "wgs84" and lead.status == "dispatched"
    assert (ep.status, ep.count, ep.max_value) == ("open", 3, 130)
    # Still exceeding, with a retransmission mixed in: the same lead is updated, never duplicated.
    res = ingest(seeded, [110, 180, 140], start=2)
    assert res.episodes_updated == 1 and res.readings_duplicate == 2
    ep, lead = lead_of(seeded)
    assert (ep.count, ep.max_value, ep.last_at) == (5, 180, T0 + timedelta(minutes=4))
    assert count(seeded, Lead) == 1
    assert count(seeded, AuditEvent, AuditEvent.action == "monitoring.episode_update") == 1
    # Two under, then three under in a later batch: closed at the first of the three.
    ingest(seeded, [90, 95], start=5)
    assert lead_of(seeded)[0].status == "open"
    res = ingest(seeded, [200, 50, 40, 30], start=7)
    assert res.episodes_closed == 1
    ep, lead = lead_of(seeded)
    assert ep.status == "closed" and ep.ended_at == T0 + timedelta(minutes=8) and ep.count == 6
    assert lead.status == "closed" and lead.closed_at is not None
    assert count(seeded, Lead) == 1
    assert count(seeded, AuditEvent, AuditEvent.action == "lead.status") == 1
    with seeded.uow() as s:
        assert audit.verify(s).ok
    # A new exceedance later is a new episode and a new lead.
    ingest(seeded, [150, 160, 170], start=20)
    assert count(seeded, Lead) == 2 and count(seeded, MonitoringEpisode) == 2


def test_flagged_values_raise_nothing(seeded: Db) -> None:
    add_point(seeded)
    res = ingest(seeded, [500, 600, 700, 800, 900, 950], flags=["M", "C", "D", "F", "S", "T"])
    assert res.readings_new == 12 and res.episodes_opened == 0
    assert count(seeded, Lead) == 0
    # Flagged values between normal ones do not break a run either.
    ingest(seeded, [120, 999, 130, 140], start=6, flags=["N", "C", "N", "N"])
    ep, _ = lead_of(seeded)
    assert ep.max_value == 140


def test_other_cn_and_pollutants_without_a_rule_are_stored_but_not_judged(seeded: Db) -> None:
    add_point(seeded, limits={"a34001": {"limit": 100, "period": "hour", "consecutive": 1}})
    ingest(seeded, [500, 600])  # minute data; the rule is on hourly data
    assert count(seeded, MonitoringReading) == 4 and count(seeded, Lead) == 0


def test_data_missing_alarm_once_per_silence(seeded: Db) -> None:
    add_point(seeded)
    ingest(seeded, [50])  # last heard at T0 + 1 min 5 s
    silence = timedelta(minutes=30)
    with seeded.uow() as s:
        assert monitoring.check_missing(s, now=T0 + timedelta(minutes=20), silence=silence) == []
    with seeded.uow() as s:
        assert len(monitoring.check_missing(s, now=T0 + timedelta(minutes=40), silence=silence)) == 1
    with seeded.uow() as s:
        assert monitoring.check_missing(s, now=T0 + timedelta(minutes=90), silence=silence) == []
    ep, lead = lead_of(seeded, "data_missing")
    assert lead.category_code == "data_missing" and lead.channel == "monitoring" and ep.status == "open"
    # Data comes back: the episode and its lead close; a later silence is a new episode.
    ingest(seeded, [50], start=100, now=T0 + timedelta(minutes=101))
    ep, lead = lead_of(seeded, "data_missing")
    assert ep.status == "closed" and lead.status == "closed"
    with seeded.uow() as s:
        assert len(monitoring.check_missing(s, now=T0 + timedelta(minutes=200), silence=silence)) == 1
    assert count(seeded, Lead, Lead.category_code == "data_missing") == 2


def test_ranking_on_a_hand_made_case(seeded: Db) -> None:
    # County 320001: one point, one episode of 2 h at twice the limit → E = 4, A = 4.
    # County 320002: two points, one episode of 1 h at 1.5× → E = 1.5, A = 0.75.
    add_point(seeded, "P1", lon=117.05, lat=34.02)
    add_point(seeded, "P2", lon=117.15, lat=34.02)
    add_point(seeded, "P3", lon=117.15, lat=34.07)
    now = T0 + timedelta(days=1)
    with seeded.uow() as s:
        s.add(MonitoringEpisode(mn="P1", kind="exceedance", pollutant="a34001", cn="2051", limit_value=100,
                                status="closed", started_at=T0, last_at=T0 + timedelta(hours=2),
                                ended_at=T0 + timedelta(hours=2), max_value=200, count=120))
        s.add(MonitoringEpisode(mn="P2", kind="exceedance", pollutant="a34001", cn="2051", limit_value=100,
                                status="open", started_at=now - timedelta(hours=1), last_at=now,
                                max_value=150, count=60))
    with seeded.uow() as s:
        rows = monitoring.ranking(s, level="county", now=now, days=30)
    by = {r.code: r for r in rows}
    assert by["320001"].exceedance_hours == pytest.approx(2.0)
    assert by["320001"].weighted_hours_per_point == pytest.approx(4.0)
    assert by["320002"].weighted_hours_per_point == pytest.approx(0.75)
    assert (by["320001"].points, by["320002"].points) == (1, 2)
    # No open leads anywhere: the index is 60 × A / max A.
    assert by["320001"].index == pytest.approx(60.0) and by["320002"].index == pytest.approx(11.25)
    assert [r.code for r in rows] == ["320001", "320002"] and rows[0].rank == 1
    with seeded.uow() as s:
        assert len(monitoring.ranking(s, level="township", now=now)) == 4
        with pytest.raises(Invalid, match="level"):
            monitoring.ranking(s, level="province", now=now)


def test_ranking_counts_open_leads_per_area(seeded: Db) -> None:
    add_point(seeded)
    ingest(seeded, [120, 130, 140])  # one open exceedance lead in county 320001
    now = T0 + timedelta(minutes=10)
    with seeded.uow() as s:
        rows = {r.code: r for r in monitoring.ranking(s, level="county", now=now)}
    assert rows["320001"].open_leads == 1 and rows["320002"].open_leads == 0
    assert rows["320001"].index == pytest.approx(100.0)
    assert rows["320001"].open_leads_per_10k_km2 > 0


def test_reassign_points_after_a_layer_change(seeded: Db) -> None:
    add_point(seeded)
    with seeded.uow() as s:
        s.execute(MonitoringPoint.__table__.update().values(county_code=None, township_code=None))
    with seeded.uow() as s:
        assert monitoring.reassign_points(s, actor="test", now=NOW) == 1
    with seeded.uow() as s:
        p = s.scalar(select(MonitoringPoint))
        assert p is not None and p.township_code == "320001001"
        assert monitoring.reassign_points(s, actor="test", now=NOW) == 0
