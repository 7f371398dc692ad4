"""The real app, served by uvicorn on 127.0.0.1, opened in headless Chromium: every map page loads
from the database with its own assets only, under its Content-Security-Policy, with no console
error and no dialog, and the XSS leads show as text."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from layers import jurisdictions, migrate, routing, users
from layers.db import make_engine, session_factory
from layers.models import MonitoringPoint
from layers.settings import Settings
from layers.shapes import point_ewkt
from maps.assets import missing_assets
from tests.api.mapseed import XSS_IMG, XSS_SCRIPT, Seeded, seed_leads
from tests.conftest import DATA_DIR, NOW, Db, write_tiny_layer

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
PASSWORD = "served-maps-password"
N_LEADS = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Seeded]]:
    """The app on a seeded SpatiaLite file (tiny layer, 300 leads, 3 monitors), on a free port."""
    if missing_assets():
        pytest.skip("front-end assets missing: run scripts/assets.sh")
    uvicorn = pytest.importorskip("uvicorn")
    from api.app import create_app

    folder = tmp_path_factory.mktemp("served")
    url = f"sqlite:///{folder / 'leadgrid.sqlite'}"
    settings = Settings(database_url=url, secret_key="served-test-secret-" + "z" * 32,
                        gc_freeze=False)
    engine = make_engine(settings)
    migrate.upgrade(engine)
    db = Db("spatialite", url, engine, session_factory(engine))
    paths = write_tiny_layer(folder / "layer")
    with db.uow() as s:
        routing.seed(s, DATA_DIR, now=NOW)
        for level in ("city", "county", "township"):
            jurisdictions.import_layer(
                s, paths[level], level=level, datum="wgs84",
                mapping="code=code,name=name" + (",parent=parent" if level != "city" else ""),
                layer="tiny", actor="test", now=NOW,
            )
        jurisdictions.activate(s, "tiny", actor="test", now=NOW)
        users.add_user(s, "leader", PASSWORD, ["leader"])
        users.add_user(s, "field_a", PASSWORD, ["field"], scope_codes=["320001"])
    stored = seed_leads(db, N_LEADS)
    with db.uow() as s:
        for i, (lon, active) in enumerate(((117.03, True), (117.12, True), (117.17, False))):
            s.add(MonitoringPoint(mn=f"MN{i}", name=XSS_IMG if i == 0 else f"监测点 {i}", orig_lon=lon,
                                  orig_lat=34.04, orig_datum="wgs84", geom=point_ewkt(lon, 34.04),
                                  county_code="320001" if lon < 117.1 else "320002", active=active))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", stored
    server.should_exit = True
    thread.join(10)
    engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM),
                               args=["--headless", "--no-sandbox", "--disable-gpu",
                                     "--disable-background-networking", "--disable-component-update"])
        yield b
        b.close()


class Visit:
    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.blocked: list[str] = []
        self.requests: list[str] = []

    def clean(self) -> None:
        assert self.dialogs == [], f"a dialog fired (XSS): {self.dialogs}"
        assert self.errors == [], self.errors
        assert self.blocked == [], self.blocked
        assert any("/static/vendor/leaflet/dist/leaflet.js" in u for u in self.requests)

    def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"served_{name}.png"))


@pytest.fixture
def visit(browser: Any, served: tuple[str, Seeded]) -> Iterator[Any]:
    base, _ = served
    pages: list[Any] = []

    def token(user: str) -> str:
        import httpx

        r = httpx.post(f"{base}/auth/token", data={"username": user, "password": PASSWORD})
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    def _open(path: str, user: str = "leader") -> Visit:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        pages.append(page)
        v = Visit(page)

        def route(r: Any) -> None:
            v.requests.append(r.request.url)
            if r.request.url.startswith(base + "/"):
                r.continue_()
            else:
                v.blocked.append(r.request.url)
                r.abort()

        def dialog(d: Any) -> None:
            v.dialogs.append(d.message)
            d.dismiss()

        page.route("**/*", route)
        page.on("console", lambda m: v.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: v.errors.append(str(exc)))
        page.on("dialog", dialog)
        sep = "&" if "?" in path else "?"
        resp = page.goto(f"{base}{path}{sep}token={token(user)}", wait_until="load")
        assert resp is not None and resp.status == 200, path
        page.wait_for_function("() => document.querySelector('.leaflet-container') !== null")
        return v

    yield _open
    for p in pages:
        p.close()


def _overlays(v: Visit) -> list[str]:
    return list(v.page.locator(".leaflet-control-layers-overlays label").all_inner_texts())


def _legend(v: Visit) -> str:
    return "\n".join(v.page.locator(".leaflet-control[data-leadgrid='legend']").all_inner_texts())


def _open_popup(v: Visit, index: int) -> str:
    v.page.evaluate("""(i) => {
        const c = Object.values(window).find(o => o instanceof L.MarkerClusterGroup);
        const mk = c.getLayers().find(l => l.options.lg === i);
        c.zoomToShowLayer(mk, () => mk.fire('click', {latlng: mk.getLatLng()}, true)); }""", index)
    v.page.wait_for_selector(".leaflet-popup-content", timeout=5000)
    text = str(v.page.inner_text(".leaflet-popup-content"))
    v.page.evaluate("() => Object.values(window).find(o => o instanceof L.Map).closePopup()")
    return text


def test_distribution_served(visit: Any, served: tuple[str, Seeded]) -> None:
    v = visit("/maps/distribution")
    p = v.page
    p.wait_for_selector(".leaflet-container[data-leadgrid-ready='1']", timeout=15000)
    assert int(p.get_attribute(".leaflet-container", "data-leads-shown")) == N_LEADS
    labels = _overlays(v)
    assert any("城市管理局" in t for t in labels) and any("大气" in t for t in labels)
    assert "处置状态" in _legend(v) and p.locator(".marker-cluster").count() > 0
    # the first two leads carry the XSS texts; their popups show them as text
    assert XSS_IMG in _open_popup(v, 0)
    second = _open_popup(v, 1)
    assert XSS_SCRIPT in second
    assert p.locator("img[src='x']").count() == 0
    p.evaluate("() => Object.values(window).find(o => o instanceof L.Map).fitBounds([[34.0, 117.0], [34.1, 117.2]])")
    p.wait_for_timeout(400)
    v.shot("distribution")
    v.clean()


def test_distribution_scoped_and_english(visit: Any, served: tuple[str, Seeded]) -> None:
    _, stored = served
    v = visit("/maps/distribution?lang=en", user="field_a")
    v.page.wait_for_selector(".leaflet-container[data-leadgrid-ready='1']", timeout=15000)
    assert int(v.page.get_attribute(".leaflet-container", "data-leads-shown")) == len(stored.codes("320001"))
    assert "Disposal status" in v.page.inner_text("body")
    v.clean()


def test_status_served(visit: Any) -> None:
    for level, n in (("county", 2), ("township", 4)):
        v = visit(f"/maps/status?level={level}")
        assert v.page.locator("path.leaflet-interactive").count() == n
        assert "超期 / 未办结" in _legend(v)
        v.page.locator("path.leaflet-interactive").first.hover()
        v.page.wait_for_selector(".leaflet-tooltip", timeout=5000)
        assert "按期办结率" in v.page.inner_text(".leaflet-tooltip")
        v.shot(f"status_{level}")
        v.clean()


def test_hotspots_served(visit: Any) -> None:
    v = visit("/maps/hotspots?unit=grid&cell_m=1000")
    assert "热点分析" in _legend(v)
    labels = _overlays(v)
    assert any("网格热点" in t for t in labels) and any("热力图" in t for t in labels)
    # four townships are too few for Gi*: the map says so instead of drawing noise
    assert "要素过少" in v.page.inner_text(".leaflet-control[data-leadgrid='notice']")
    assert v.page.locator("path.leaflet-interactive").count() > 30
    v.shot("hotspots")
    v.clean()


def test_nearby_served(visit: Any) -> None:
    v = visit("/maps/nearby?lon=117.1&lat=34.05&radius_m=2500")
    lst = v.page.locator(".leaflet-control[data-leadgrid='list']")
    assert "附近案件" in lst.inner_text()
    assert lst.locator("a[href^='geo:']").count() > 0
    v.shot("nearby")
    v.clean()


def test_monitoring_served(visit: Any) -> None:
    v = visit("/maps/monitoring")
    assert "数据缺失" in _legend(v) and "离线" in _legend(v)
    assert len(_overlays(v)) == 4
    v.page.locator("path.leaflet-interactive[fill='#fd8d3c']").first.click(force=True)
    v.page.wait_for_selector(".leaflet-popup-content", timeout=5000)
    assert XSS_IMG in v.page.inner_text(".leaflet-popup-content")
    assert v.page.locator("img[src='x']").count() == 0
    v.shot("monitoring")
    v.clean()


def test_csp_refuses_a_script_without_the_nonce(visit: Any) -> None:
    v = visit("/maps/status")
    v.clean()
    # as if escaping had failed and markup had slipped in: the browser refuses to run it
    with pytest.raises(Exception, match=r"(?i)content security policy|refused|failed"):
        v.page.add_script_tag(content="window.__pwned = 1;")
    assert v.page.evaluate("() => window.__pwned") is None
    assert any("Content Security Policy" in e for e in v.errors)
