"""GET /leads/nearby over HTTP: scope, distances, navigation links, route order."""

from __future__ import annotations

from api.routers.nearby import NearbyPage
from geo import crs as gcrs
from tests.api.conftest import Api

LEAD = {"channel": "12345", "category": "catering_fumes", "reported_at": "2026-05-01T09:00:00+08:00"}


def _file(api: Api, ext: str, lon: float, lat: float) -> dict:
    r = api.client.post("/leads", json={**LEAD, "external_id": ext, "lon": lon, "lat": lat},
                        headers=api.as_("dispatcher"))
    assert r.status_code == 201, r.text
    return r.json()


def test_field_user_sees_only_scope_with_distance_and_links(api: Api) -> None:
    a = _file(api, "a", 117.098, 34.02)  # county 320001, ~185 m west of the point
    b = _file(api, "b", 117.102, 34.02)  # county 320002, ~185 m east
    gx, gy = gcrs.wgs84_to_gcj02(117.10, 34.02)  # the phone reports GCJ-02 (Amap / WeChat)
    q = f"/leads/nearby?lon={gx}&lat={gy}&datum=gcj02&radius_m=500"
    mine = api.client.get(q, headers=api.as_("field_a"))
    assert mine.status_code == 200, mine.text
    items = mine.json()["items"]
    assert [i["code"] for i in items] == [a["code"]]
    # The hand-built answer is exactly the documented schema: no field missing, none extra,
    # every value of its type, the deadline an ISO date-time with its offset.
    page = NearbyPage.model_validate_json(mine.content)
    assert set(mine.json()) == set(NearbyPage.model_fields)
    assert set(items[0]) == set(type(page.items[0]).model_fields)
    assert set(items[0]["navigation"]) == set(type(page.items[0].navigation).model_fields)
    assert page.items[0].due_at is not None and page.items[0].due_at.utcoffset() is not None
    it = items[0]
    assert abs(it["distance_m"] - gcrs.geodesic_distance_m(117.10, 34.02, 117.098, 34.02)) < 0.5
    nav = it["navigation"]
    assert nav["geo_uri"] == "geo:34.020000,117.098000" and "openstreetmap.org" in nav["url"]
    ex, ey = gcrs.wgs84_to_gcj02(117.098, 34.02)
    assert nav["datum"] == "gcj02" and abs(nav["lon"] - ex) < 1e-6 and abs(nav["lat"] - ey) < 1e-6
    both = api.client.get(q, headers=api.as_("leader")).json()["items"]
    assert {i["code"] for i in both} == {a["code"], b["code"]}
    # /leads/nearby is not swallowed by /leads/{ref}, and needs a token.
    assert api.client.get(q).status_code == 401


def test_k_nearest_without_radius(api: Api) -> None:
    codes = [_file(api, f"k{i}", 117.05 + i * 0.001, 34.02)["code"] for i in range(5)]
    r = api.client.get("/leads/nearby?lon=117.05&lat=34.02&limit=3", headers=api.as_("leader")).json()
    assert [i["code"] for i in r["items"]] == codes[:3] and r["radius_m"] is None
