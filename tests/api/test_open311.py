"""Open311 GeoReport v2: services, posting through the common intake, status and field mapping."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from layers import audit
from layers.models import Lead
from tests.api.conftest import Api

BASE = "/open311/v2"


def _post(api: Api, user: str = "dispatcher", fmt: str = "json", **form: object) -> tuple[int, object]:
    data = {"service_code": "catering_fumes", "lat": 34.02, "long": 117.05, "description": "油烟很大",
            "api_key": api.token(user), **form}
    r = api.client.post(f"{BASE}/requests.{fmt}", data={k: v for k, v in data.items() if v is not None})
    return r.status_code, (r.json() if fmt == "json" else r.text)


def test_services_json_and_xml(api: Api) -> None:
    r = api.client.get(f"{BASE}/services.json")
    assert r.status_code == 200
    svc = {s["service_code"]: s for s in r.json()}
    assert svc["catering_fumes"]["metadata"] is False and svc["catering_fumes"]["type"] == "realtime"
    assert svc["catering_fumes"]["group"] == "air"
    x = api.client.get(f"{BASE}/services.xml")
    assert x.headers["content-type"].startswith("text/xml")
    root = ET.fromstring(x.content)
    assert root.tag == "services" and {e.findtext("service_code") for e in root.iter("service")} == set(svc)
    d = api.client.get(f"{BASE}/services/catering_fumes.json").json()
    assert d == {"service_code": "catering_fumes", "attributes": []}
    missing = api.client.get(f"{BASE}/services/nope.json")
    assert missing.status_code == 404 and missing.json()[0]["code"] == 404
    assert ET.fromstring(api.client.get(f"{BASE}/services/nope.xml").content).tag == "errors"


def test_post_goes_through_intake_and_get_maps_fields(api: Api) -> None:
    code, body = _post(api, first_name="张", last_name="三", phone="13800000000")
    assert code == 201, body
    rid = body[0]["service_request_id"]
    lead = api.client.get(f"/leads/{rid}", headers=api.as_("dispatcher")).json()
    assert lead["channel"] == "open311" and lead["county_code"] == "320001" and lead["body_code"] == "CMB"
    with api.db.uow() as s:
        s.execute(update(Lead).where(Lead.code == rid).values(due_at=datetime(2030, 1, 2, tzinfo=UTC)))
        assert s.get(Lead, lead["id"]).complainant_name == "张 三"
    got = api.client.get(f"{BASE}/requests/{rid}.json", headers=api.as_("leader")).json()
    assert len(got) == 1
    g = got[0]
    assert g["service_request_id"] == rid and g["status"] == "open" and g["service_code"] == "catering_fumes"
    assert g["agency_responsible"] == "城市管理局" and g["expected_datetime"].startswith("2030-01-02")
    assert abs(g["lat"] - 34.02) < 1e-9 and abs(g["long"] - 117.05) < 1e-9 and g["status_notes"] is None
    # status and status_notes follow the lead and its last *public* audit event.
    with api.db.uow() as s:
        s.execute(update(Lead).where(Lead.code == rid).values(status="closed"))
        now = datetime.now(UTC)
        audit.record(s, [
            audit.EventIn(now, "x", "close", "lead", str(lead["id"]), {}, {"public": True,
                          "public_note": "已整改到位"}),
            audit.EventIn(now, "x", "note", "lead", str(lead["id"]), {}, {"internal": "不公开"}, reason="内部"),
        ])
    g = api.client.get(f"{BASE}/requests/{rid}.json?api_key={api.token('leader')}").json()[0]
    assert g["status"] == "closed" and g["status_notes"] == "已整改到位"
    x = ET.fromstring(api.client.get(f"{BASE}/requests/{rid}.xml", headers=api.as_("leader")).content)
    assert x.tag == "service_requests" and x.find("request/status").text == "closed"


def test_filters_and_window(api: Api) -> None:
    ids = [_post(api, description=f"d{i}")[1][0]["service_request_id"] for i in range(3)]
    h = api.as_("leader")
    assert len(api.client.get(f"{BASE}/requests.json", headers=h).json()) == 3
    one = api.client.get(f"{BASE}/requests.json?service_request_id={ids[0]},{ids[2]}", headers=h).json()
    assert {r["service_request_id"] for r in one} == {ids[0], ids[2]}
    with api.db.uow() as s:
        s.execute(update(Lead).where(Lead.code == ids[1]).values(status="closed"))
    assert [r["service_request_id"] for r in
            api.client.get(f"{BASE}/requests.json?status=closed", headers=h).json()] == [ids[1]]
    assert len(api.client.get(f"{BASE}/requests.json?status=open", headers=h).json()) == 2
    assert len(api.client.get(f"{BASE}/requests.json?status=open,closed", headers=h).json()) == 3
    assert api.client.get(f"{BASE}/requests.json?service_code=road_dust", headers=h).json() == []
    page = api.client.get(f"{BASE}/requests.json?page=2&page_size=2", headers=h).json()
    assert len(page) == 1
    # The spec's 90-day window: older leads are not returned by default, wider windows refused.
    with api.db.uow() as s:
        s.execute(update(Lead).where(Lead.code == ids[0]).values(
            reported_at=datetime.now(UTC) - timedelta(days=120)))
    assert len(api.client.get(f"{BASE}/requests.json", headers=h).json()) == 2
    old = (datetime.now(UTC) - timedelta(days=200)).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = api.client.get(f"{BASE}/requests.json?start_date={old}", headers=h)
    assert r.status_code == 400 and "90 days" in r.json()[0]["description"]
    assert api.client.get(f"{BASE}/requests.json?status=pending", headers=h).status_code == 400
    assert api.client.get(f"{BASE}/requests.json?page_size=100000", headers=h).status_code == 422


def test_scope_and_keys(api: Api) -> None:
    a = _post(api, lat=34.02, long=117.05)[1][0]["service_request_id"]  # county 320001
    b = _post(api, lat=34.02, long=117.15)[1][0]["service_request_id"]  # county 320002
    mine = api.client.get(f"{BASE}/requests.json", headers=api.as_("field_a")).json()
    assert [r["service_request_id"] for r in mine] == [a]
    assert api.client.get(f"{BASE}/requests/{b}.json", headers=api.as_("field_a")).status_code == 404
    r = api.client.get(f"{BASE}/requests.json")
    assert r.status_code == 401 and r.json()[0]["code"] == 401
    assert api.client.get(f"{BASE}/requests.json?api_key=forged").status_code == 401
    # Filing needs an intake role; a field user files only inside their scope, else nothing is stored.
    code, _ = _post(api, user="leader")
    assert code == 403
    code, _ = _post(api, user="field_a", lat=34.02, long=117.15)
    assert code == 403
    assert len(api.client.get(f"{BASE}/requests.json", headers=api.as_("leader")).json()) == 2


def test_post_validation(api: Api) -> None:
    code, body = _post(api, description="x" * 4001)
    assert code == 422
    code, body = _post(api, lat=None, long=None, address_string=None)
    assert code == 400 and "address_string" in body[0]["description"]
    code, body = _post(api, service_code="no_such")
    assert code == 400 and "category" in body[0]["description"]
    code, body = _post(api, lat=None)
    assert code == 400 and "lat" in body[0]["description"]
    code, text = _post(api, fmt="xml", lat=999)
    assert code == 422
    code, text = _post(api, fmt="xml")
    assert code == 201 and ET.fromstring(text).find("request/service_request_id") is not None


def test_status_notes_show_only_text_approved_for_publication(api: Api) -> None:
    code, body = _post(api)
    assert code == 201, body
    rid = body[0]["service_request_id"]
    h = api.as_("leader")
    r = api.client.post(f"/leads/{rid}/actions/sign", headers=api.as_("field_a"), json={"payload": {"public_note": ""}})
    assert r.status_code == 422 and r.json()["field"] == "public_note"
    # An internal note alone publishes nothing.
    r = api.client.post(f"/leads/{rid}/actions/sign", headers=api.as_("field_a"),
                        json={"payload": {"note": "内部：联系人电话13800000000"}})
    assert r.status_code == 200, r.text
    assert api.client.get(f"{BASE}/requests/{rid}.json", headers=h).json()[0]["status_notes"] is None
    # A step with a public note shows it, and never the internal note beside it.
    r = api.client.post(f"/leads/{rid}/actions/start", headers=api.as_("field_a"),
                        json={"payload": {"note": "内部备注", "public_note": "已到现场核查"}})
    assert r.status_code == 200, r.text
    g = api.client.get(f"{BASE}/requests/{rid}.json", headers=h).json()[0]
    assert g["status_notes"] == "已到现场核查"
