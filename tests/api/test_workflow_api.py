"""Workflow endpoints under access control, on both backends."""

from __future__ import annotations

from tests.api.conftest import Api
from tests.layers.workflow.test_workflow_service import NOTICE_2027, RECTIFY, intake


def test_actions_through_the_api_with_clear_refusals(api: Api) -> None:
    code = intake(api.db, "api1")
    c = api.client
    r = c.get(f"/leads/{code}/actions", headers=api.as_("field_a"))
    assert r.status_code == 200 and r.json()["actions"] == ["sign", "return", "extension_request"]
    assert c.get(f"/leads/{code}/actions", headers=api.as_("inspector")).json()["actions"] == []
    # Out of scope: 404, not 403.
    r = c.post(f"/leads/{code}/actions/sign", headers=api.as_("field_b"))
    assert r.status_code == 404
    r = c.post(f"/leads/{code}/actions/sign", headers=api.as_("dispatcher"))
    assert r.status_code == 403 and "needs one of the roles ['field']" in r.json()["detail"]
    r = c.post(f"/leads/{code}/actions/return", headers=api.as_("field_a"),
               json={"payload": {"reason": "meh"}})
    assert r.status_code == 422 and "fixed reasons" in r.json()["detail"]
    assert r.json()["field"] == "reason"
    r = c.post(f"/leads/{code}/actions/close", headers=api.as_("dispatcher"))
    assert r.status_code == 409 and r.json()["state"] == "dispatched"
    r = c.post(f"/leads/{code}/actions/sign", headers=api.as_("field_a"), json={"version": 1})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "signed" and r.json()["version"] == 2
    # A stale version: conflict carrying the current state.
    r = c.post(f"/leads/{code}/actions/start", headers=api.as_("field_a"), json={"version": 1})
    assert r.status_code == 409 and r.json()["state"] == "signed" and r.json()["version"] == 2
    # Assigned scope: another field user of the same county may not start the signed case.
    r = c.post(f"/leads/{code}/actions/start", headers=api.as_("eeb_a"))
    assert r.status_code in (403, 404)
    for action, payload in (("start", {}), ("rectify", RECTIFY)):
        r = c.post(f"/leads/{code}/actions/{action}", headers=api.as_("field_a"),
                   json={"payload": payload})
        assert r.status_code == 200, r.text
    trail = c.get(f"/leads/{code}/trail", headers=api.as_("inspector")).json()
    assert [e["action"] for e in trail["events"]] == [
        "lead.intake", "lead.sign", "lead.start", "lead.rectify"]
    assert trail["events"][1]["after"]["role"] == "field"
    assert [k["node"] for k in trail["clocks"]] == ["sign", "conclude", "on_site", "handle", "verify"]
    assert c.get(f"/leads/{code}/trail", headers=api.as_("field_b")).status_code == 404


def test_kpi_oversight_calendar_and_escalation_endpoints(api: Api) -> None:
    c = api.client
    code = intake(api.db, "api2")
    r = c.get("/kpi?by=county", headers=api.as_("leader"))
    assert r.status_code == 200 and r.json()["groups"][0]["group"] == "320001"
    assert c.get("/kpi?by=planet", headers=api.as_("leader")).status_code == 422
    assert c.get("/kpi", headers=api.as_("field_a")).status_code == 403
    r = c.get("/kpi?by=body&node_times=true", headers=api.as_("inspector"))
    assert r.status_code == 200 and "node_hours" in r.json()
    for kind in ("overdue", "returned", "closed_too_fast", "rebounds"):
        r = c.get(f"/oversight/{kind}", headers=api.as_("inspector"))
        assert r.status_code == 200, r.text
        assert c.get(f"/oversight/{kind}", headers=api.as_("field_a")).status_code == 403
    # The lead was taken in on 1 June 2026 (test clock); the real clock is later: overdue.
    over = c.get("/oversight/overdue", headers=api.as_("leader")).json()
    assert [i["code"] for i in over["items"]] == [code]
    assert c.get("/oversight/nonsense", headers=api.as_("leader")).status_code == 422
    assert c.post("/escalate", headers=api.as_("leader")).status_code == 403
    first = c.post("/escalate", headers=api.as_("admin")).json()
    assert first["urged"] >= 1 and first["red"] == first["urged"]  # sign (and conclude) clocks
    again = c.post("/escalate", headers=api.as_("admin")).json()
    assert again == {"yellow": 0, "red": 0, "urged": 0, "supervised": 0}
    kinds = [n["kind"] for n in c.get("/notices", headers=api.as_("inspector")).json()]
    assert kinds.count("urge") == first["urged"]
    files = {"file": ("2027.csv", NOTICE_2027.encode(), "text/csv")}
    assert c.post("/calendar/import", files=files, headers=api.as_("dispatcher")).status_code == 403
    r = c.post("/calendar/import", files=files, headers=api.as_("admin"))
    assert r.status_code == 200 and r.json()["year"] == 2027 and r.json()["days"] == 7
    bad = {"file": ("bad.csv", b"# year: 2027\ndate,kind,name\n2027-13-01,holiday,x\n", "text/csv")}
    r = c.post("/calendar/import", files=bad, headers=api.as_("admin"))
    assert r.status_code == 422 and "2027-13-01" in r.json()["detail"]
    days = c.get("/calendar/2027", headers=api.as_("leader")).json()
    assert days[0] == {"date": "2027-01-01", "kind": "holiday", "name": "元旦", "source": "2027.csv"}


def test_duplicates_queue_links_and_dismissal(api: Api) -> None:
    c = api.client
    first = intake(api.db, "dup1")
    second = intake(api.db, "dup2", lat=34.0205)  # ~55 m away, same category, same time
    r = c.get("/queue?kind=duplicates", headers=api.as_("dispatcher"))
    assert r.status_code == 200, r.text
    assert [(i["code"], i["duplicate_of"]) for i in r.json()["items"]] == [(second, first)]
    assert c.get("/queue", headers=api.as_("field_a")).status_code == 403
    assert c.get("/queue?kind=gossip", headers=api.as_("dispatcher")).status_code == 422
    links = c.get(f"/leads/{second}/links", headers=api.as_("inspector")).json()
    assert links["duplicate_of"] == first and 50 < links["duplicate_m"] < 60
    assert c.get(f"/leads/{second}/trail", headers=api.as_("inspector")).json()["case"][
        "duplicate_of"] == first
    assert c.post(f"/leads/{second}/duplicate/dismiss", headers=api.as_("field_a")).status_code == 403
    r = c.post(f"/leads/{second}/duplicate/dismiss", headers=api.as_("dispatcher"),
               json={"reason": "different shops"})
    assert r.status_code == 200 and r.json() == {"lead": second, "dismissed": first}
    r = c.post(f"/leads/{second}/duplicate/dismiss", headers=api.as_("dispatcher"))
    assert r.status_code == 409
    assert c.get("/queue", headers=api.as_("dispatcher")).json()["duplicates"]["total"] == 0
    r = c.get("/oversight/feedback_owed", headers=api.as_("inspector"))
    assert r.status_code == 200 and r.json()["total"] == 0
