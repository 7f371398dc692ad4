"""Real browser tests: each map loads offline in headless Chromium, shows layers and legend,
and the XSS leads stay text."""

from __future__ import annotations

import pytest

from maps.distribution import render_distribution
from maps.hotspots import render_hotspots
from maps.monitoring import render_monitoring
from maps.nearby import render_nearby
from maps.status import render_status
from tests.maps import synthetic
from tests.maps.browsing import screenshot

pytestmark = pytest.mark.browser


def html(m) -> str:
    return m.get_root().render()


def clean(v) -> None:
    assert v.dialogs == [], f"XSS fired: {v.dialogs}"
    assert v.errors == [], v.errors
    assert v.blocked == [], v.blocked


def test_distribution(open_map, leads, townships) -> None:
    v = open_map(html(render_distribution(leads, townships, text_fields=("description", "address"))), "distribution")
    p = v.page
    p.wait_for_selector(".leaflet-container[data-leadgrid-ready='1']", timeout=10000)
    assert int(p.get_attribute(".leaflet-container", "data-leads-shown")) == len(leads)
    labels = p.locator(".leaflet-control-layers-overlays label").all_inner_texts()
    assert any("市生态环境局" in t for t in labels) and any("大气" in t for t in labels)
    assert p.locator(".leaflet-control[data-leadgrid='legend']").count() == 2
    assert p.locator(".marker-cluster").count() > 0
    # The XSS township name shows as text in its tooltip, no <img> element is created.
    assert p.locator("img[src='x']").count() == 0
    # Open the XSS lead's popup (leads 0 and 1) by zooming to it.
    p.evaluate("""() => {
        const m = Object.values(window).find(o => o instanceof L.Map);
        const c = Object.values(window).find(o => o instanceof L.MarkerClusterGroup);
        const mk = c.getLayers().find(l => l.options.lg === 1);
        c.zoomToShowLayer(mk, () => mk.fire('click', {latlng: mk.getLatLng()}, true));
        window.__map = m; window.__c = c; }""")
    p.wait_for_selector(".leaflet-popup-content", timeout=5000)
    text = p.inner_text(".leaflet-popup-content")
    assert synthetic.XSS_SCRIPT in text and synthetic.XSS_IMG in text
    assert "XZ20240000001" in text
    # Unchecking a body layer hides its leads.
    p.locator(".leaflet-control-layers-overlays label", has_text="市住建局").locator("input").click()
    shown = int(p.get_attribute(".leaflet-container", "data-leads-shown"))
    assert shown == len(leads) - int((leads["body"] == "市住建局").sum())
    p.evaluate("() => { window.__map.closePopup(); window.__map.setView([34.3, 117.5], 9); }")
    p.locator(".leaflet-control-layers-overlays label", has_text="市住建局").locator("input").click()
    p.wait_for_timeout(300)
    screenshot(v, "distribution")
    clean(v)


def test_status(open_map, status_areas) -> None:
    v = open_map(html(render_status(status_areas)), "status")
    p = v.page
    assert p.locator("path.leaflet-interactive").count() == len(status_areas)
    assert "超期 / 未办结" in p.inner_text(".leaflet-control[data-leadgrid='legend']")
    screenshot(v, "status")
    clean(v)


def test_hotspots(open_map, leads, townships) -> None:
    v = open_map(html(render_hotspots(leads, townships)), "hotspots")
    p = v.page
    legend = p.inner_text(".leaflet-control[data-leadgrid='legend']")
    assert "热点 99% 置信" in legend and "冷点 99% 置信" in legend
    labels = p.locator(".leaflet-control-layers-overlays label").all_inner_texts()
    assert any("乡镇热点" in t for t in labels) and any("网格热点" in t for t in labels)
    assert any("热力图" in t for t in labels)
    # show the heat layer too, the screenshot then shows both
    p.locator(".leaflet-control-layers-overlays label", has_text="热力图").locator("input").click()
    p.wait_for_timeout(300)
    screenshot(v, "hotspots")
    clean(v)


def test_hotspots_too_few_shows_notice(open_map, leads, townships) -> None:
    v = open_map(html(render_hotspots(leads.head(0), townships.head(12))), "hotspots_few")
    assert "要素过少" in v.page.inner_text(".leaflet-control[data-leadgrid='notice']")
    screenshot(v, "hotspots_few")
    clean(v)


def test_nearby(open_map, leads) -> None:
    v = open_map(html(render_nearby(leads, 117.18, 34.26, 1500)), "nearby")
    p = v.page
    lst = p.locator(".leaflet-control[data-leadgrid='list']")
    assert "附近案件" in lst.inner_text()
    assert lst.locator("a[href^='geo:']").count() > 0
    screenshot(v, "nearby")
    clean(v)


def test_monitoring(open_map, monitoring_points, townships) -> None:
    v = open_map(html(render_monitoring(monitoring_points, townships)), "monitoring")
    p = v.page
    assert "超标" in p.inner_text(".leaflet-control[data-leadgrid='legend']")
    p.locator("path.leaflet-interactive[fill='#de2d26']").first.click(force=True)
    p.wait_for_selector(".leaflet-popup-content", timeout=5000)
    screenshot(v, "monitoring")
    clean(v)
