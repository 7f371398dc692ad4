"""The map queries: figures aggregated by the database agree with a count done by hand."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from geo.hotspots import township_hotspots
from layers import audit, mapdata
from layers.leads import OPEN_STATES, LeadFilter
from layers.models import Lead, MonitoringPoint
from layers.shapes import point_ewkt
from layers.users import SYSTEM, Principal
from tests.api.mapseed import seed_leads
from tests.conftest import NOW, Db


def test_status_frame_counts_match_the_leads(seeded: Db) -> None:
    stored = seed_leads(seeded, 60)
    first = next(iter(stored.leads))
    with seeded.uow() as s:
        lead_id, county = s.execute(select(Lead.id, Lead.county_code).where(Lead.code == first)).one()
        audit.record(s, [audit.EventIn(at=NOW, actor="t", action="lead.reopen", entity="lead",
                                       entity_id=str(lead_id), before={}, after={}),
                         audit.EventIn(at=NOW, actor="t", action="lead.reopen_redispatch", entity="lead",
                                       entity_id=str(lead_id), before={}, after={}),
                         audit.EventIn(at=NOW, actor="t", action="lead.reopen", entity="lead",
                                       entity_id=str(lead_id), before={}, after={})])
    with seeded.uow() as s:
        areas = mapdata.status_frame(s, SYSTEM, LeadFilter(), level="county", now=NOW)
        leads = mapdata.lead_frame(s, SYSTEM, LeadFilter())
    assert list(areas["code"]) == ["320001", "320002"]
    for _, a in areas.iterrows():
        mine = leads[leads["county_code"] == a["code"]]
        is_open = mine["status"].isin(OPEN_STATES)
        assert a["open"] == is_open.sum() > 0
        assert a["overdue"] == (is_open & (mine["deadline"] < NOW)).sum() > 0
        assert a["closed"] == (mine["status"] == "closed").sum()
        assert a["closed_on_time"] == mine["code"].isin(stored.on_time).sum()
        # two reopens of the one lead; reopen_redispatch (which follows a reopen) is not a third
        assert a["rebound"] == (2 if a["code"] == county else 0)
        assert isinstance(a["worst_body"], str)
    assert int(areas["open"].sum() + areas["closed"].sum()) == len(leads)
    assert 0 < areas["closed_on_time"].sum() < areas["closed"].sum()


def test_township_level_and_scope(seeded: Db) -> None:
    seed_leads(seeded, 40)
    p = Principal("a", frozenset({"field"}), frozenset({"320001001"}))
    with seeded.uow() as s:
        towns = mapdata.status_frame(s, p, LeadFilter(), level="township", now=NOW)
        counties = mapdata.area_frame(s, p, LeadFilter(), level="county")
        leads = mapdata.lead_frame(s, p, LeadFilter())
    assert list(towns["code"]) == ["320001001"]
    # a township user asking for counties gets the one holding their township, with only their leads
    assert list(counties["code"]) == ["320001"] and counties["count"].iloc[0] == len(leads)
    assert set(leads["township_code"]) == {"320001001"}


def test_lead_frame_rejects_unknown_text_fields_and_levels(seeded: Db) -> None:
    with seeded.uow() as s:
        with pytest.raises(mapdata.Invalid, match="text_fields"):
            mapdata.lead_frame(s, SYSTEM, LeadFilter(), text_fields=("complainant_phone",))
        with pytest.raises(mapdata.Invalid, match="level"):
            mapdata.area_frame(s, SYSTEM, LeadFilter(), level="city")


def test_monitoring_status_from_links_and_episodes(seeded: Db) -> None:
    store = pytest.importorskip("layers.monitoring_store")
    with seeded.uow() as s:
        for mn, lon, active in (("MN-1", 117.02, True), ("MN-2", 117.04, True), ("MN-3", 117.06, True),
                                ("MN-4", 117.08, False)):
            s.add(MonitoringPoint(mn=mn, name=mn, orig_lon=lon, orig_lat=34.02, orig_datum="wgs84",
                                  geom=point_ewkt(lon, 34.02), county_code="320001", active=active))
        s.flush()
        for mn in ("MN-1", "MN-2"):
            s.add(store.MonitoringLink(mn=mn, last_received_at=NOW, last_data_time=NOW - timedelta(minutes=5)))
        s.add(store.MonitoringEpisode(mn="MN-2", kind="exceedance", pollutant="SO2", limit_value=50.0,
                                      unit="mg/m3", started_at=NOW, last_at=NOW, max_value=80.5))
    with seeded.uow() as s:
        pts = mapdata.monitoring_frame(s, SYSTEM).set_index("code")
    assert pts["status"].to_dict() == {"MN-1": "normal", "MN-2": "exceeding", "MN-3": "missing", "MN-4": "offline"}
    assert pts.loc["MN-2", "latest"] == "SO2 80.5 mg/m3 (> 50)"
    assert pts.loc["MN-1", "time"] == NOW - timedelta(minutes=5)


def test_lean_map_frames_agree_with_the_lead_frame(seeded: Db) -> None:
    """lead_points and lead_locations: the same leads, order, names and places as lead_frame."""
    stored = seed_leads(seeded, 50)
    with seeded.uow() as s:
        s.execute(update(Lead).where(Lead.code == next(iter(stored.leads))).values(body_code=None))
    field = Principal("a", frozenset({"field"}), frozenset({"320001"}))
    cases = [(SYSTEM, LeadFilter(), "zh", ()), (SYSTEM, LeadFilter(status=["closed", "signed"]), "en", ()),
             (field, LeadFilter(category=["catering_fumes", "industrial_gas"]), "zh", ("description", "address")),
             (SYSTEM, LeadFilter(channel=["wechat"]), "zh", ())]
    with seeded.uow() as s:
        for p, f, lang, text in cases:
            full = mapdata.lead_frame(s, p, f, lang=lang, text_fields=text)
            lean = mapdata.lead_points(s, p, f, lang=lang, text_fields=text)
            where = mapdata.lead_locations(s, p, f)
            assert len(full) == len(lean) == len(where)
            for c in ("code", "category", "category_group", "status", "body", *text):
                assert list(lean[c].astype(object)) == list(full[c].astype(object)), c
            assert list(lean["deadline"]) == list(full["deadline"])
            assert list(lean["lon"]) == list(where["lon"]) == list(full.geometry.x)
            assert list(lean["lat"]) == list(where["lat"]) == list(full.geometry.y)
        assert len(mapdata.lead_points(s, field, LeadFilter())) == len(stored.codes("320001")) > 0
        en = mapdata.lead_points(s, SYSTEM, LeadFilter(), lang="en")
        assert set(en["category"]) >= {"Catering fumes"} and set(en["body"]) >= {"City Management Bureau"}
        assert en["body"].isna().sum() == 1  # the lead without a body
        with pytest.raises(mapdata.Invalid, match="text_fields"):
            mapdata.lead_points(s, SYSTEM, LeadFilter(), text_fields=("complainant_phone",))
        with pytest.raises(mapdata.Invalid, match="lang"):
            mapdata.lead_points(s, SYSTEM, LeadFilter(), lang="fr")


def test_hotspot_township_counts_by_code_equal_point_in_polygon(seeded: Db) -> None:
    """The hotspot map's township counts (assigned codes, one scan) are the points' own polygons."""
    stored = seed_leads(seeded, 80, seed=11)
    lost = next(iter(stored.leads))
    with seeded.uow() as s:
        # A lead without a location keeps its township code: counted by area_frame, not by the hotspots.
        s.execute(update(Lead).where(Lead.code == lost).values(geom=None))
    field = Principal("a", frozenset({"field"}), frozenset({"320001"}))
    cases = [(SYSTEM, LeadFilter()), (SYSTEM, LeadFilter(category=["catering_fumes", "industrial_gas"])),
             (field, LeadFilter(status=["received", "closed"]))]
    with seeded.uow() as s:
        plain = mapdata.area_frame(s, SYSTEM, LeadFilter(), level="township")
        for p, f in cases:
            leads, towns = mapdata.hotspot_frames(s, p, f)
            where = mapdata.lead_locations(s, p, f)
            shapes = mapdata.area_frame(s, p, f, level="township")
            assert leads.equals(where) and len(leads) > 0
            assert list(towns["code"]) == list(shapes["code"]) and len(towns) > 1
            assert towns.geometry.geom_equals(shapes.geometry).all()
            pip = township_hotspots(leads["lon"], leads["lat"], towns, crs=4527).features["count"]
            assert list(towns["count"]) == [int(c) for c in pip]
            assert int(towns["count"].sum()) == len(leads)
        everyone, _ = mapdata.hotspot_frames(s, SYSTEM, LeadFilter())
    assert int(plain["count"].sum()) == len(stored.leads) == len(everyone) + 1
