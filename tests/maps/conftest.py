"""Fixtures for map tests: synthetic Xuzhou data, a local static server and headless Chromium."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd
import pytest
import shapely

from maps.assets import ASSET_URL_PREFIX, asset_root, missing_assets
from tests.maps import synthetic

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def townships() -> gpd.GeoDataFrame:
    return synthetic.townships()


@pytest.fixture(scope="session")
def leads(townships: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    return synthetic.leads(3000, towns=townships)


@pytest.fixture(scope="session")
def status_areas(townships: gpd.GeoDataFrame, leads: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    now = pd.Timestamp("2024-07-01", tz="UTC")
    closed = leads["status"].isin(["closed", "verified"])
    overdue = ~closed & (pd.to_datetime(leads["deadline"], utc=True) < now)
    df = (
        pd.DataFrame(
            {
                "township_code": leads["township_code"],
                "open": ~closed,
                "overdue": overdue,
                "closed": closed,
                "closed_on_time": closed & (leads.index % 4 != 0),
                "rebound": closed & (leads.index % 17 == 0),
            }
        )
        .groupby("township_code")
        .sum()
    )
    worst = leads[overdue].groupby("township_code")["body"].agg(lambda s: s.value_counts().index[0])
    out = townships.merge(df, left_on="code", right_index=True, how="left").fillna(
        {"open": 0, "overdue": 0, "closed": 0, "closed_on_time": 0, "rebound": 0}
    )
    out["worst_body"] = out["code"].map(worst)
    return out


@pytest.fixture(scope="session")
def monitoring_points() -> gpd.GeoDataFrame:
    statuses = ["normal", "exceeding", "missing", "offline", "normal", "normal", "exceeding"]
    lon = [117.1, 117.2, 117.25, 116.9, 117.6, 118.0, 117.3]
    lat = [34.2, 34.28, 34.3, 34.7, 34.4, 34.35, 34.22]
    names = [f"监测点{i}" for i in range(len(lon))]
    names[1] = synthetic.XSS_SCRIPT
    return gpd.GeoDataFrame(
        {
            "code": [f"M{i:03d}" for i in range(len(lon))],
            "name": names,
            "status": statuses,
            "latest": ["PM10 85 µg/m³"] * len(lon),
            "time": pd.Timestamp("2024-06-30 08:00", tz="UTC"),
        },
        geometry=shapely.points(lon, lat),
        crs=4326,
    )


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A temp web root with the assets under ASSET_URL_PREFIX, served on 127.0.0.1."""
    missing = missing_assets()
    if missing:
        pytest.skip(f"front-end assets missing ({missing[:2]}...): run scripts/assets.sh")
    root = tmp_path_factory.mktemp("site")
    vendor = root / ASSET_URL_PREFIX.strip("/")
    vendor.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(asset_root(), vendor)
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


# Module scope: Playwright's sync API refuses to start while another instance runs, and
# tests/api/test_maps_served_browser.py starts its own in the same session.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


class Visit:
    """An opened map page with what happened while loading it."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.blocked: list[str] = []


@pytest.fixture
def open_map(browser: Any, site: tuple[Path, str]) -> Iterator[Any]:
    root, base = site
    pages: list[Any] = []

    def _open(html: str, name: str) -> Visit:
        (root / f"{name}.html").write_text(html, encoding="utf-8")
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        pages.append(page)
        v = Visit(page)

        def route(r: Any) -> None:
            if r.request.url.startswith(base + "/"):
                r.continue_()
            else:
                v.blocked.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.on("console", lambda msg: v.errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: v.errors.append(str(exc)))

        def dialog(d: Any) -> None:
            v.dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)
        page.goto(f"{base}/{name}.html", wait_until="load")
        page.wait_for_function("() => document.querySelector('.leaflet-container') !== null")
        return v

    yield _open
    for p in pages:
        p.close()
