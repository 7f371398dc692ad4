"""Access control from day one: tokens, roles, and scope enforced inside the queries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt

from tests.api.conftest import Api

LEAD = {"channel": "12345", "category": "catering_fumes", "reported_at": "2026-05-01T09:00:00+08:00"}


def _file(api: Api, ext: str, lon: float, lat: float, **kw: object) -> dict:
    r = api.client.post("/leads", json={**LEAD, "external_id": ext, "lon": lon, "lat": lat, **kw},
                        headers=api.as_("dispatcher"))
    assert r.status_code == 201, r.text
    return r.json()


def test_health_needs_no_token(api: Api) -> None:
    r = api.client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["active_boundary_layer"] == "tiny"
    assert r.json()["backend"] == api.db.backend


def test_every_other_endpoint_needs_a_token(api: Api) -> None:
    for path in ("/leads", "/bodies", "/categories", "/routing-rules", "/jurisdictions",
                 "/jurisdictions/lookup?lon=117.05&lat=34.02", "/boundaries", "/users/me"):
        r = api.client.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"


def test_wrong_password_and_unknown_user_get_401(api: Api) -> None:
    assert api.client.post("/auth/token", data={"username": "admin", "password": "nope-nope-nope"}).status_code == 401
    assert api.client.post("/auth/token", data={"username": "ghost", "password": "nope-nope-nope"}).status_code == 401


def test_expired_and_forged_tokens_get_401(api: Api) -> None:
    secret = api.db.settings().secret_key
    past = datetime.now(UTC) - timedelta(hours=2)
    expired = jwt.encode({"sub": "admin", "iat": int(past.timestamp()),
                          "exp": int((past + timedelta(minutes=5)).timestamp())}, secret, algorithm="HS256")
    r = api.client.get("/leads", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    forged = jwt.encode({"sub": "admin", "exp": int((datetime.now(UTC) + timedelta(hours=1)).timestamp())},
                        "not-the-secret-" + "y" * 32, algorithm="HS256")
    r = api.client.get("/leads", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401 and r.json()["detail"] == "invalid token"
    unsigned = jwt.encode({"sub": "admin", "exp": 9999999999}, None, algorithm="none")
    assert api.client.get("/leads", headers={"Authorization": f"Bearer {unsigned}"}).status_code == 401


def test_county_scope_hides_other_county(api: Api) -> None:
    a = _file(api, "a1", 117.05, 34.02)  # county 320001
    b = _file(api, "b1", 117.15, 34.02)  # county 320002
    assert a["assignment"]["county_code"] == "320001" and b["assignment"]["county_code"] == "320002"
    h = api.as_("field_a")
    listed = api.client.get("/leads", headers=h).json()
    assert {i["code"] for i in listed["items"]} == {a["code"]} and listed["total"] == 1
    assert api.client.get(f"/leads/{a['code']}", headers=h).status_code == 200
    # Another county's lead does not exist for this user: 404, not 403.
    r = api.client.get(f"/leads/{b['code']}", headers=h)
    assert r.status_code == 404
    assert api.client.get(f"/leads/{b['id']}", headers=h).status_code == 404
    assert api.client.get(f"/leads/{b['code']}/dispatches", headers=h).status_code == 404
    # Filters cannot widen the scope.
    assert api.client.get("/leads?jurisdiction=320002", headers=h).json()["total"] == 0
    # A city-wide leader sees both.
    assert api.client.get("/leads", headers=api.as_("leader")).json()["total"] == 2


def test_body_and_county_scope_combine(api: Api) -> None:
    _file(api, "c1", 117.05, 34.02, category="industrial_gas")  # EEB in 320001
    _file(api, "c2", 117.05, 34.02)  # CMB in 320001
    _file(api, "c3", 117.15, 34.02, category="industrial_gas")  # EEB in 320002
    items = api.client.get("/leads", headers=api.as_("eeb_a")).json()["items"]
    assert [(i["external_id"], i["body_code"], i["county_code"]) for i in items] == [("c1", "EEB", "320001")]


def test_roles_limit_actions(api: Api) -> None:
    r = api.client.post("/leads", json={**LEAD, "external_id": "x", "lon": 117.05, "lat": 34.02},
                        headers=api.as_("leader"))
    assert r.status_code == 403 and "dispatcher" in r.json()["detail"]
    rule = {"priority": 1, "body_code": "EEB", "category_code": "odour"}
    assert api.client.post("/routing-rules", json=rule, headers=api.as_("dispatcher")).status_code == 403
    assert api.client.post("/routing-rules", json=rule, headers=api.as_("admin")).status_code == 201


def test_scoped_field_user_cannot_file_outside_scope(api: Api) -> None:
    r = api.client.post("/leads", json={**LEAD, "external_id": "out", "lon": 117.15, "lat": 34.02},
                        headers=api.as_("field_a"))
    assert r.status_code == 403
    # ... and nothing was stored: the unit of work rolled back.
    assert api.client.get("/leads", headers=api.as_("leader")).json()["total"] == 0
    ok = api.client.post("/leads", json={**LEAD, "external_id": "in", "lon": 117.05, "lat": 34.02},
                         headers=api.as_("field_a"))
    assert ok.status_code == 201


def test_me_shows_roles_and_scope(api: Api) -> None:
    me = api.client.get("/users/me", headers=api.as_("field_a")).json()
    assert me["roles"] == ["field"] and me["scope_codes"] == ["320001"]


def test_list_items_are_exactly_the_single_lead_answers(api: Api) -> None:
    """GET /leads builds its rows without the ORM; each must equal GET /leads/{code} to the byte."""
    _file(api, "eq1", 117.05, 34.02, description="油烟扰民", address="中山路 1 号")
    _file(api, "eq2", 117.0995, 34.02, urgency="urgent")  # beside the county border: candidates, review
    r = api.client.post("/leads", json={**LEAD, "external_id": "eq3", "address": "no point given"},
                        headers=api.as_("dispatcher"))
    assert r.status_code == 201, r.text
    _file(api, "eq4", 117.05, 34.02, datum="gcj02")
    h = api.as_("leader")
    page = api.client.get("/leads?page_size=10", headers=h).json()
    assert page["total"] == 4 and page["total_exact"] is True and len(page["items"]) == 4
    for item in page["items"]:
        assert item == api.client.get(f"/leads/{item['code']}", headers=h).json(), item["external_id"]
    by_ext = {i["external_id"]: i for i in page["items"]}
    assert by_ext["eq3"]["lon"] is None and by_ext["eq2"]["candidates"]
