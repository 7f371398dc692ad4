"""Hostile and broken input gets a clear 4xx, never a 500: sizes, coordinates, datums, SQL, Unicode."""

from __future__ import annotations

import json

import pytest

from tests.api.conftest import Api

LEAD = {"channel": "12345", "category": "catering_fumes", "reported_at": "2026-05-01T09:00:00+08:00"}


def _post(api: Api, **kw: object) -> object:
    return api.client.post("/leads", json={**LEAD, "external_id": "r1", "lon": 117.05, "lat": 34.02, **kw},
                           headers=api.as_("dispatcher"))


def test_oversized_body_is_413(api: Api) -> None:
    r = _post(api, description="x" * (1 << 20))
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    # Chunked (no Content-Length) is counted as it arrives.
    def gen():  # type: ignore[no-untyped-def]
        for _ in range(20):
            yield b"x" * 100_000
    r = api.client.post("/leads", content=gen(), headers={**api.as_("dispatcher"), "content-type": "application/json"})
    assert r.status_code == 413


def test_huge_page_size_is_422(api: Api) -> None:
    h = api.as_("leader")
    for path in ("/leads?page_size=1000000", "/open311/v2/requests.json?page_size=1000000",
                 "/leads/nearby?lon=117&lat=34&limit=100000", "/exports/leads.csv?page_size=10000000"):
        r = api.client.get(path, headers=h)
        assert r.status_code == 422, path
    assert api.client.get("/public/leads?page_size=1000000").status_code == 422


@pytest.mark.parametrize("lon,lat", [("nan", "34"), ("117", "NaN"), ("999", "34"), ("-999", "34"), ("117", "999"),
                                     ("inf", "34"), ("34.02", "117.05")])
def test_bad_coordinates_are_422(api: Api, lon: str, lat: str) -> None:
    h = api.as_("leader")
    r = api.client.get(f"/leads/nearby?lon={lon}&lat={lat}", headers=h)
    assert r.status_code == 422, r.text
    r = api.client.get(f"/jurisdictions/lookup?lon={lon}&lat={lat}", headers=h)
    assert r.status_code == 422


def test_nan_in_json_body_is_422(api: Api) -> None:
    body = json.dumps({**LEAD, "external_id": "n1", "lon": float("nan"), "lat": 34.0})  # Python writes NaN
    r = api.client.post("/leads", content=body, headers={**api.as_("dispatcher"), "content-type": "application/json"})
    assert r.status_code == 422


def test_swapped_in_range_point_is_unassigned_with_reason(api: Api) -> None:
    # lon 34.02 / lat 80 is a valid coordinate far outside the service area: stored, not routed.
    r = _post(api, lon=34.02, lat=80.0)
    assert r.status_code == 201
    a = r.json()["assignment"]
    assert a["method"] == "unassigned" and a["review"] and "outside" in a["review_reason"]


def test_wrong_datum_and_bd09_edge(api: Api) -> None:
    h = api.as_("leader")
    assert api.client.get("/leads/nearby?lon=117&lat=34&datum=wgs72", headers=h).status_code == 422
    assert _post(api, datum="gcj-02").status_code == 422
    # BD-09 at the antimeridian converts to just beyond -180: a clear 422, not a server error.
    r = api.client.get("/jurisdictions/lookup?lon=-180&lat=-90&datum=bd09", headers=h)
    assert r.status_code == 422 and "lon" in r.json()["detail"]


@pytest.mark.parametrize("evil", ["' OR 1=1 --", "\"; DROP TABLE leads; --", "%", "_", "\\", "320001' --"])
def test_sql_metacharacters_are_just_text(api: Api, evil: str) -> None:
    _post(api)
    h = api.as_("leader")
    for path in ("/leads", "/exports/leads.csv", "/open311/v2/requests.json"):
        param = "jurisdiction" if path != "/open311/v2/requests.json" else "service_code"
        r = api.client.get(path, params={param: evil}, headers=h)
        assert r.status_code in (200, 422), (path, r.text)
    assert api.client.get("/leads", params={"status": evil}, headers=h).json()["total"] == 0
    assert api.client.get("/leads", headers=h).json()["total"] == 1  # still there
    assert api.client.get("/leads/" + evil.replace("/", ""), headers=h).status_code == 404


@pytest.mark.parametrize("text", ["😷🏭 油烟", "e\u0301", "\u202eRTL override", "\ufeffBOM", "𠀀𪚥", "a" * 4000])
def test_unicode_round_trips(api: Api, text: str) -> None:
    r = _post(api, description=text, address=text[:500])
    assert r.status_code == 201, r.text
    got = api.client.get(f"/leads/{r.json()['code']}", headers=api.as_("leader")).json()
    assert got["description"] == text


def test_nul_characters_are_refused(api: Api) -> None:
    assert _post(api, description="a\u0000b").status_code == 422
    h = api.as_("leader")
    assert api.client.get("/leads?status=a%00b", headers=h).status_code == 422
    r = api.client.post("/open311/v2/requests.json",
                        data={"service_code": "catering_fumes", "description": "a\x00b", "lat": 34.02,
                              "long": 117.05, "api_key": api.token("dispatcher")})
    assert r.status_code == 422


def test_over_long_description_is_422(api: Api) -> None:
    r = _post(api, description="x" * 4001)
    assert r.status_code == 422 and "description" in r.json()["detail"]


def test_out_of_range_ids_are_not_server_errors(api: Api) -> None:
    h = api.as_("admin")
    assert api.client.get("/leads/99999999999999999999", headers=h).status_code == 404
    assert api.client.delete("/routing-rules/2147483648", headers=h).status_code == 422
    assert api.client.get("/leads/%C2%B2", headers=h).status_code == 404  # "²" is a Unicode digit


def test_exhausted_connection_pool_is_503_with_retry_after(api: Api) -> None:
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    app = api.client.app

    @app.get("/_test/saturated")  # type: ignore[attr-defined, untyped-decorator]
    def saturated() -> None:
        raise PoolTimeout("QueuePool limit of size 10 overflow 10 reached, connection timed out, timeout 30.00")

    r = api.client.get("/_test/saturated")
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert "at capacity" in r.json()["detail"]
