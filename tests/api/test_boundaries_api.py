"""Boundary endpoints: gis imports, validates, previews, activates and rolls back; others read."""

from __future__ import annotations

from pathlib import Path

from layers import leads
from tests.api.conftest import Api
from tests.conftest import NOW
from tests.layers.test_boundaries_change import write_split_layer


def test_gis_workflow_and_roles(api: Api, tmp_path: Path) -> None:
    with api.db.uow() as s:
        leads.submit(s, [leads.LeadIn("12345", "e", "catering_fumes", NOW, lon=117.07, lat=34.02)],
                     actor="test", now=NOW)
    paths = write_split_layer(tmp_path / "split")
    for level in ("city", "county", "township"):
        with paths[level].open("rb") as fh:
            r = api.client.post("/boundaries/import", headers=api.as_("gis"),
                                files={"file": (paths[level].name, fh, "application/geo+json")},
                                data={"layer": "split", "level": level, "datum": "wgs84",
                                      "map": "code=code,name=name" + (",parent=parent" if level != "city" else "")})
        assert r.status_code == 200, r.text
        assert r.json()["validation"]["ok"]
    with paths["city"].open("rb") as fh:
        r = api.client.post("/boundaries/import", headers=api.as_("dispatcher"),
                            files={"file": ("c.geojson", fh)},
                            data={"layer": "x", "level": "city", "map": "code=code,name=name"})
    assert r.status_code == 403

    r = api.client.get("/boundaries/split/validation", headers=api.as_("leader"))
    assert r.status_code == 200 and r.json()["ok"] and r.json()["features"] == 8
    r = api.client.get("/boundaries/split/preview", headers=api.as_("gis"))
    body = r.json()
    assert r.status_code == 200 and body["leads"]["moving"] == 1
    assert body["leads"]["items"][0]["new_township_code"] == "320001003"
    assert body["leads"]["pairs"][0]["from"] == "320001001" and body["leads"]["pairs"][0]["count"] == 1
    hidden = api.client.get("/boundaries/split/preview", headers=api.as_("leader")).json()
    assert hidden["leads"]["moving"] == 1 and hidden["leads"]["items"] == []  # counts only
    assert api.client.get("/boundaries/nope/preview", headers=api.as_("gis")).status_code == 404

    assert api.client.post("/boundaries/split/activate", headers=api.as_("dispatcher")).status_code == 403
    r = api.client.post("/boundaries/split/activate", headers=api.as_("gis"))
    assert r.status_code == 200 and r.json()["leads_moved"] == 1 and r.json()["previous"] == "tiny"
    r = api.client.get("/jurisdictions/lookup", params={"lon": 117.07, "lat": 34.02}, headers=api.as_("leader"))
    assert r.json()["township"]["code"] == "320001003"  # the running app picked up the new version

    r = api.client.get("/boundaries/history/point", headers=api.as_("leader"),
                       params={"lon": 117.07, "lat": 34.02, "at": "2026-06-01T03:00:00Z"})
    assert r.status_code == 200 and r.json()["township"]["code"] == "320001001" and r.json()["layer"] == "tiny"
    code = api.client.get("/leads", headers=api.as_("admin")).json()
    ref = (code["items"] if isinstance(code, dict) else code)[0]["code"]
    r = api.client.get(f"/boundaries/history/lead/{ref}", headers=api.as_("admin"))
    assert r.json()["at_receipt"]["township_code"] == "320001001"
    assert r.json()["current"]["township_code"] == "320001003"
    assert api.client.get(f"/boundaries/history/lead/{ref}", headers=api.as_("field_b")).status_code == 404

    r = api.client.post("/boundaries/rollback", headers=api.as_("gis"))
    assert r.status_code == 200 and r.json()["active"] == "tiny" and r.json()["leads_moved"] == 1
    assert api.client.post("/boundaries/split/activate", headers=api.as_("gis")).status_code == 409
