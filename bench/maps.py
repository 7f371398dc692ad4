"""Benchmark the distribution map against plain folium clusters, same leads, same run.

Prints, for 10,000 and 100,000 leads: server render time, HTML size, and the time until headless
Chromium has drawn the map (load event, then Leaflet ready: for our map, the cluster finished
adding every marker). Plain folium ``MarkerCluster`` is measured at 10,000 only: at 100,000 it
takes about 40 s and 21 MB (issue 5), which the run would only repeat. folium's
``FastMarkerCluster`` is measured at both sizes.

Run: ``.venv/bin/python bench/maps.py`` (needs scripts/assets.sh and /usr/bin/chromium).
"""

from __future__ import annotations

import functools
import http.server
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "maps")]

import folium  # noqa: E402
import synthetic  # noqa: E402
from folium.plugins import FastMarkerCluster, MarkerCluster  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from maps.assets import ASSET_URL_PREFIX, asset_root, localize  # noqa: E402
from maps.distribution import render_distribution  # noqa: E402

READY = {
    "leadgrid": "() => document.querySelector('.leaflet-container[data-leadgrid-ready]') !== null",
    "folium": "() => document.querySelectorAll('.marker-cluster').length > 0",
}


class Quiet(http.server.SimpleHTTPRequestHandler):
    """Static files without a log line per request."""

    def log_message(self, *args: Any) -> None:
        pass


def plain(leads: Any, fast: bool) -> folium.Map:
    m = folium.Map(location=[34.3, 117.5], zoom_start=9, tiles=None, max_zoom=18)
    m.options["maxZoom"] = 18
    pts = list(zip(leads.geometry.y.round(6), leads.geometry.x.round(6), strict=True))
    # folium's default FastMarkerCluster callback needs awesome-markers, which we do not ship
    cb = "function (row) { return L.marker(new L.LatLng(row[0], row[1])); }"
    (FastMarkerCluster(pts, callback=cb) if fast else MarkerCluster(pts)).add_to(m)
    return localize(m)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="leadgrid-bench-"))
    shutil.copytree(asset_root(), root / ASSET_URL_PREFIX.strip("/"))
    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    towns = synthetic.townships()
    rows = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        for n in (10_000, 100_000):
            leads = synthetic.leads(n, towns=towns)
            cases = [
                ("leadgrid distribution", "leadgrid", lambda leads=leads: render_distribution(leads, towns)),
                ("folium FastMarkerCluster", "folium", lambda leads=leads: plain(leads, True)),
            ]
            if n <= 10_000:
                cases.append(("folium MarkerCluster", "folium", lambda leads=leads: plain(leads, False)))
            for name, kind, make in cases:
                t0 = time.perf_counter()
                html = make().get_root().render()
                render_s = time.perf_counter() - t0
                f = root / f"{kind}-{n}.html"
                f.write_text(html, encoding="utf-8")
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(base) else r.abort())
                t0 = time.perf_counter()
                page.goto(f"{base}/{f.name}", wait_until="load", timeout=120_000)
                page.wait_for_function(READY[kind], timeout=120_000, polling=50)
                drawn_s = time.perf_counter() - t0
                page.close()
                rows.append((n, name, render_s, len(html.encode()) / 1e6, drawn_s))
                print(
                    f"{n:>7,} {name:<26} render {render_s:6.2f} s  html {rows[-1][3]:6.2f} MB  drawn {drawn_s:6.2f} s",
                    flush=True,
                )
        browser.close()
    server.shutdown()
    ours = {r[0]: r for r in rows if r[1].startswith("leadgrid")}
    top = ours[100_000]
    ok = top[2] <= 1.0 and top[3] <= 3.0 and top[4] <= 3.0
    print(f"goal at 100,000 (render <= 1 s, html <= 3 MB, drawn <= 3 s): {'met' if ok else 'NOT met'}")
    print("folium MarkerCluster at 100,000 not run: ~40 s / 21 MB per issue 5.")


if __name__ == "__main__":
    main()
