"""Public disclosure: no token, no personal data, coarsened locations, rate limited."""

from __future__ import annotations

import numpy as np
import pytest

from geo import crs as gcrs
from layers import disclosure
from tests.api.conftest import Api

LEAD = {"channel": "12345", "category": "catering_fumes", "reported_at": "2026-05-01T09:00:00+08:00",
        "complainant_name": "王小明", "complainant_phone": "13912345678", "address": "解放路12号3单元"}


def _file(api: Api, ext: str, lon: float, lat: float, public: bool, **kw: object) -> dict:
    r = api.client.post("/leads", json={**LEAD, "external_id": ext, "lon": lon, "lat": lat, "public": public,
                                        "description": f"描述{ext}", **kw}, headers=api.as_("dispatcher"))
    assert r.status_code == 201, r.text
    return r.json()


def test_only_public_leads_without_personal_data(api: Api) -> None:
    pub = _file(api, "p1", 117.05, 34.02, True)
    _file(api, "h1", 117.05, 34.02, False)
    r = api.client.get("/public/leads")  # no token
    assert r.status_code == 200
    body = r.json()
    assert body["total"] == 1 and [i["code"] for i in body["items"]] == [pub["code"]]
    text = r.text
    for secret in ("王小明", "13912345678", "解放路", "描述h1"):
        assert secret not in text
    item = body["items"][0]
    assert item["description"] == "描述p1" and item["body_name"] == "城市管理局"
    assert body["coarsening"] == "grid 100 m"


def _cell_xy(lon: float, lat: float) -> tuple[float, float]:
    epsg = int(disclosure.gk_zone_epsg(np.array([lon]))[0])
    x, y = gcrs.transformer(4326, epsg).transform(lon, lat)
    return float(x), float(y)


def test_grid_coarsening_publishes_the_cell_centre(api: Api) -> None:
    rng = np.random.default_rng(3)
    real = [(float(x), float(y)) for x, y in zip(rng.uniform(117.01, 117.19, 40), rng.uniform(34.01, 34.09, 40),
                                                 strict=True)]
    codes = {_file(api, f"g{i}", x, y, True)["code"]: (x, y) for i, (x, y) in enumerate(real)}
    items = api.client.get("/public/leads?page_size=100").json()["items"]
    assert len(items) == 40
    g = 100.0
    for it in items:
        rx, ry = _cell_xy(*codes[it["code"]])
        px, py = _cell_xy(it["lon"], it["lat"])
        # The published point is the centre of the real point's cell (to the 6-decimal rounding, ~0.1 m) ...
        assert abs(px - (np.floor(rx / g) + 0.5) * g) < 0.2 and abs(py - (np.floor(ry / g) + 0.5) * g) < 0.2
        # ... so it is never further than half the cell diagonal from the truth.
        assert gcrs.geodesic_distance_m(it["lon"], it["lat"], *codes[it["code"]]) <= g * 2**0.5 / 2 + 0.5


def test_points_of_one_cell_are_indistinguishable(api: Api) -> None:
    x, y = _cell_xy(117.05, 34.02)
    cx, cy = (np.floor(x / 100) + 0.5) * 100, (np.floor(y / 100) + 0.5) * 100
    inv = gcrs.transformer(int(disclosure.gk_zone_epsg(np.array([117.05]))[0]), 4326)
    pts = [inv.transform(cx + dx, cy + dy) for dx, dy in ((-45, -45), (44, 10), (0, 49), (30, -30))]
    for i, (lon, lat) in enumerate(pts):
        _file(api, f"c{i}", lon, lat, True)
    published = {(i["lon"], i["lat"]) for i in api.client.get("/public/leads").json()["items"]}
    assert len(published) == 1  # four different real points, one published point: nothing to recover


def test_township_coarsening(api: Api) -> None:
    _file(api, "t1", 117.01, 34.01, True)
    _file(api, "t2", 117.09, 34.04, True)
    api.client.app.state.disclosure = disclosure.DisclosureSettings(coarsen="township")  # type: ignore[attr-defined]
    items = api.client.get("/public/leads").json()["items"]
    assert {(i["township_code"], i["lon"], i["lat"]) for i in items} == {("320001001", 117.05, 34.025)}


def test_stats_per_jurisdiction_and_body(api: Api) -> None:
    _file(api, "s1", 117.05, 34.02, True)
    _file(api, "s2", 117.15, 34.02, False)
    _file(api, "s3", 117.15, 34.02, False, category="industrial_gas")
    st = api.client.get("/public/stats").json()
    counties = {r["code"]: r for r in st["counties"]}
    assert counties["320001"]["total"] == 1 and counties["320002"]["total"] == 2
    assert counties["320001"]["public"] == 1 and counties["320002"]["open"] == 2
    assert counties["320001"]["name"] == "甲县"
    assert {r["code"]: r["total"] for r in st["bodies"]} == {"CMB": 2, "EEB": 1}


def test_rate_limited_per_client(api: Api) -> None:
    api.client.app.state.disclosure = disclosure.DisclosureSettings(rate_per_minute=1, burst=3)  # type: ignore[attr-defined]
    codes = [api.client.get("/public/stats").status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    r = api.client.get("/public/leads")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1


def test_token_bucket_refills() -> None:
    from api.limits import TokenBucket

    t = [0.0]
    b = TokenBucket(rate_per_s=2.0, burst=2, clock=lambda: t[0])
    assert [b.take("a"), b.take("a")] == [0.0, 0.0]
    assert b.take("a") == pytest.approx(0.5)
    assert b.take("b") == 0.0  # per client
    t[0] = 0.5
    assert b.take("a") == 0.0
