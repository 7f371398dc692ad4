"""Map pages served from the database: scope, filters, language, auth, validation, CSP, escaping."""

from __future__ import annotations

import json
import re

import pytest

from layers.models import MonitoringPoint
from layers.shapes import point_ewkt
from maps.assets import external_urls
from tests.api.conftest import Api
from tests.api.mapseed import XSS_IMG, XSS_SCRIPT, Seeded, map_leads, seed_leads

MAPS = ("/maps/distribution", "/maps/status", "/maps/hotspots", "/maps/nearby?lon=117.1&lat=34.05",
        "/maps/monitoring")


@pytest.fixture
def stored(api: Api) -> Seeded:
    return seed_leads(api.db, 80)


def shows(html: str, text: str) -> bool:
    """``text`` is on the page, as is or as folium's ASCII-escaped JSON."""
    return text in html or json.dumps(text)[1:-1] in html


def get(api: Api, path: str, user: str = "leader", **params: object):
    # httpx replaces a query string already in ``path`` by ``params``, even an empty one
    return api.client.get(path, params=params or None, headers=api.as_(user))


def test_county_user_distribution_holds_only_their_county(api: Api, stored: Seeded) -> None:
    everyone = map_leads(get(api, "/maps/distribution").text)
    assert {x["code"] for x in everyone} == stored.codes()
    r = get(api, "/maps/distribution", "field_a")
    assert r.status_code == 200
    mine = map_leads(r.text)
    assert {x["code"] for x in mine} == stored.codes("320001") != set()
    assert all(x["lon"] < 117.1 + 1e-6 for x in mine)  # county 320001 is west of lon 117.10
    # Only their county's townships are drawn, so no other territory's names or counts leak.
    assert shows(r.text, "甲一镇") and not shows(r.text, "乙一镇")


def test_body_and_county_scope_both_apply(api: Api, stored: Seeded) -> None:
    mine = map_leads(get(api, "/maps/distribution", "eeb_a").text)
    assert mine and {x["body"] for x in mine} == {"生态环境局"}
    assert {x["code"] for x in mine} <= stored.codes("320001")


def test_filters_come_from_the_url(api: Api, stored: Seeded) -> None:
    fumes = map_leads(get(api, "/maps/distribution", category="catering_fumes").text)
    assert {x["code"] for x in fumes} == stored.codes(category="catering_fumes")
    closed = map_leads(get(api, "/maps/distribution", status=["closed", "verified"]).text)
    want = {c for c, (_, _, s) in stored.leads.items() if s in ("closed", "verified")}
    assert {x["code"] for x in closed} == want and {x["status"] for x in closed} == {"已办结", "已核查"}
    recent = map_leads(get(api, "/maps/distribution", since="2026-05-29T00:00:00+08:00").text)
    assert 0 < len(recent) < len(stored.leads)
    assert map_leads(get(api, "/maps/distribution", channel="wechat").text) == []
    both = get(api, "/maps/distribution", category=["catering_fumes", "industrial_gas"], body="CMB").text
    assert {x["category"] for x in map_leads(both)} == {"餐饮油烟"}


def test_language_from_the_url_and_settings(api: Api, stored: Seeded) -> None:
    zh = get(api, "/maps/distribution").text
    assert shows(zh, "处置状态") and not shows(zh, "Disposal status")
    en = get(api, "/maps/distribution", lang="en").text
    assert shows(en, "Disposal status") and not shows(en, "处置状态")
    assert {x["category"] for x in map_leads(en)} >= {"Catering fumes"}
    assert "Overdue / Open" in get(api, "/maps/status", lang="en").text
    assert "Hot spots (Gi*, FDR corrected)" in get(api, "/maps/hotspots", lang="en").text


def test_every_map_needs_a_token_header_or_query(api: Api, stored: Seeded) -> None:
    for path in MAPS:
        r = api.client.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
        sep = "&" if "?" in path else "?"
        assert api.client.get(f"{path}{sep}token=not-a-token").status_code == 401, path
        ok = api.client.get(f"{path}{sep}token={api.token('leader')}")
        assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/html"), path
        assert api.client.get(path, headers=api.as_("leader")).status_code == 200, path


@pytest.mark.parametrize(("path", "field"), [
    ("/maps/status?level=city", "level"),
    ("/maps/hotspots?unit=hexagon", "unit"),
    ("/maps/hotspots?cell_m=-5", "cell_m"),
    ("/maps/hotspots?cell_m=60000", "cell_m"),
    ("/maps/nearby?lon=500&lat=34", "lon"),
    ("/maps/nearby?lat=34", "lon"),
    ("/maps/nearby?lon=117&lat=34&radius_m=0", "radius_m"),
    ("/maps/nearby?lon=117&lat=34&datum=mars", "datum"),
    ("/maps/distribution?lang=fr", "lang"),
    ("/maps/distribution?since=yesterday", "since"),
])
def test_bad_parameters_get_422_naming_the_field(api: Api, stored: Seeded, path: str, field: str) -> None:
    r = api.client.get(path, headers=api.as_("leader"))
    assert r.status_code == 422, (path, r.text)
    assert field in r.json()["detail"]


def test_pages_are_offline_escaped_and_under_a_strict_csp(api: Api, stored: Seeded) -> None:
    for path in MAPS:
        r = get(api, path)
        assert external_urls(r.text) == [], path
        csp = r.headers["content-security-policy"]
        nonce = re.search(r"'nonce-([^']+)'", csp).group(1)  # type: ignore[union-attr]
        assert "script-src 'self' 'nonce-" in csp and "'unsafe-inline'" not in csp.split("style-src")[0]
        assert "default-src 'none'" in csp and "img-src 'self' data:" in csp
        tags = re.findall(r"<script\b[^>]*>", r.text)
        assert tags and all(f'nonce="{nonce}"' in t or " src=" in t for t in tags), path
        assert r.headers["referrer-policy"] == "no-referrer" and r.headers["cache-control"] == "no-store"
        # the XSS texts never appear raw
        assert XSS_IMG not in r.text and XSS_SCRIPT not in r.text, path
    # ... but they are in the page, as data: the popup shows them as text
    texts = {t for x in map_leads(get(api, "/maps/distribution").text) for t in x["texts"]}
    assert XSS_IMG in texts and XSS_SCRIPT in texts


def test_tile_host_is_allowed_for_images_only(api: Api, stored: Seeded) -> None:
    api.client.app.state.settings = api.db.settings(  # type: ignore[attr-defined]
        tiles="https://{s}.tiles.example.org/{z}/{x}/{y}.png", tiles_attribution="© example")
    r = get(api, "/maps/status")
    csp = r.headers["content-security-policy"]
    assert "img-src 'self' data: https://*.tiles.example.org;" in csp
    assert "tiles.example.org" not in csp.split("img-src")[0]
    assert "tiles.example.org/{z}" in r.text


def test_status_map_figures(api: Api, stored: Seeded) -> None:
    r = get(api, "/maps/status", level="township")
    assert r.status_code == 200
    assert r.text.count("leadgrid-tip") >= 4  # one tooltip per township
    a = get(api, "/maps/status", "field_a").text
    assert shows(a, "甲县") and not shows(a, "乙县")


def test_nearby_lists_cases_in_reach_and_in_scope(api: Api, stored: Seeded) -> None:
    r = get(api, "/maps/nearby", lon=117.1, lat=34.05, radius_m=5000)
    assert r.status_code == 200
    codes = set(re.findall(r"L\d{8}-[0-9A-F]{8}", r.text))
    assert codes and codes <= stored.codes()
    # open cases only by default
    closed = {c for c, (_, _, s) in stored.leads.items() if s == "closed"}
    assert not (codes & closed)
    west = set(re.findall(r"L\d{8}-[0-9A-F]{8}", get(api, "/maps/nearby", "field_a", lon=117.1, lat=34.05,
                                                       radius_m=5000).text))
    assert west and west <= stored.codes("320001")
    gcj = get(api, "/maps/nearby", lon=117.1, lat=34.05, datum="gcj02", radius_m=300)
    assert gcj.status_code == 200


def test_monitoring_points_in_scope(api: Api) -> None:
    with api.db.uow() as s:
        for mn, county, lon in (("MN-A", "320001", 117.05), ("MN-B", "320002", 117.15)):
            s.add(MonitoringPoint(mn=mn, name=f"点 {mn}", orig_lon=lon, orig_lat=34.02, orig_datum="wgs84",
                                  geom=point_ewkt(lon, 34.02), county_code=county, city_code="320000"))
    everyone = get(api, "/maps/monitoring").text
    assert shows(everyone, "点 MN-A") and shows(everyone, "点 MN-B")
    mine = get(api, "/maps/monitoring", "field_a").text
    assert shows(mine, "点 MN-A") and not shows(mine, "点 MN-B")


def test_pages_are_gzipped_for_clients_that_accept_it(api: Api, stored: Seeded) -> None:
    plain = api.client.get("/maps/distribution", headers={**api.as_("leader"), "Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.headers["vary"] == "Accept-Encoding"
    for accept in ("gzip", "br;q=1.0, gzip;q=0.8", "*"):
        r = api.client.get("/maps/distribution", headers={**api.as_("leader"), "Accept-Encoding": accept})
        assert r.headers["content-encoding"] == "gzip", accept
        assert int(r.headers["content-length"]) < len(r.content) / 2  # sent compressed, decoded by httpx
        assert map_leads(r.text) == map_leads(plain.text)
    refused = api.client.get("/maps/status", headers={**api.as_("leader"), "Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers


def test_lead_text_is_never_run_as_a_template(api: Api) -> None:
    """A lead's text that looks like Jinja stays text (branca compiles rendered output as a template)."""
    from datetime import timedelta

    from layers import leads as lead_store
    from tests.conftest import NOW

    texts = ("{{ 'SST' ~ 'I-X' }}", "{# SSTI-Z", "{% if 0 %}hidden-SSTI{% endif %}")
    with api.db.uow() as s:
        lead_store.submit(s, [lead_store.LeadIn(
            channel="12345", external_id=f"tmpl-{i}", category="catering_fumes", reported_at=NOW - timedelta(days=1),
            description=t, address=t, lon=117.05 + i / 100, lat=34.05) for i, t in enumerate(texts)],
            actor="test", now=NOW)
    for path in MAPS:
        r = get(api, path)
        assert r.status_code == 200, path
        assert "SSTI-X" not in r.text and "{{" not in r.text and "{#" not in r.text, path
    shown = {t for x in map_leads(get(api, "/maps/distribution").text) for t in x["texts"]}
    assert set(texts) <= shown
