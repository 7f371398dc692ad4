"""Screenshots of every map of a running leadgrid server, for the README (not a test).

    .venv/bin/python scripts/screenshots.py http://127.0.0.1:8777 --token TOKEN
    .venv/bin/python scripts/screenshots.py http://127.0.0.1:8777 --username shot --password ...

Saves docs/screenshots/<map>.png. Headless Debian Chromium through Playwright; every request that
does not go to the server is blocked, so the pictures show what an offline network sees. A map
that logs a console error or opens a dialog fails the run.
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
MAX_BYTES = 400_000

#: name -> (path, JavaScript run after load to set the view worth showing)
MAPS: dict[str, tuple[str, str]] = {
    "distribution": ("/maps/distribution", ""),
    "status": ("/maps/status?level=county", ""),
    "status_township": ("/maps/status?level=township", ""),
    "hotspots": ("/maps/hotspots", ""),
    "nearby": ("/maps/nearby?lon=117.185&lat=34.262&radius_m=3000", ""),
    "monitoring": ("/maps/monitoring", ""),
    "distribution_en": ("/maps/distribution?lang=en", ""),
}


def token_for(base: str, username: str, password: str) -> str:
    data = urllib.parse.urlencode({"username": username, "password": password}).encode()
    with urllib.request.urlopen(f"{base}/auth/token", data=data, timeout=30) as r:
        return str(json.load(r)["access_token"])


def _watch(page: Any, base: str) -> list[str]:
    """Block requests that leave ``base``; collect console errors, page errors and dialogs."""
    problems: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith(base + "/"):
            r.continue_()
        else:
            problems.append(f"blocked {r.request.url}")
            r.abort()

    def dialog(d: Any) -> None:
        problems.append(f"dialog {d.message}")
        d.dismiss()

    page.route("**/*", route)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("dialog", dialog)
    return problems


def _one(browser: Any, base: str, token: str, name: str, target: Path) -> int:
    path, js = MAPS[name]
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    problems = _watch(page, base)
    sep = "&" if "?" in path else "?"
    resp = page.goto(f"{base}{path}{sep}token={token}", wait_until="load", timeout=120_000)
    if resp is None or resp.status != 200:
        raise SystemExit(f"{name}: HTTP {resp.status if resp else '?'} for {path}")
    page.wait_for_selector(".leaflet-container", timeout=30_000)
    if name.startswith("distribution"):
        page.wait_for_selector(".leaflet-container[data-leadgrid-ready='1']", timeout=60_000)
    if js:
        page.evaluate(js)
    page.wait_for_timeout(800)
    page.screenshot(path=str(target))
    page.close()
    if problems:
        raise SystemExit(f"{name}: {problems[:3]}")
    size = target.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{name}: {size:,} bytes > {MAX_BYTES:,}; simplify the map")
    return size


def shoot(base: str, token: str, out: Path, names: list[str]) -> list[tuple[str, int]]:
    """Screenshot each named map into ``out``; returns (name, bytes) pairs."""
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        done = [(name, _one(browser, base, token, name, out / f"{name}.png")) for name in names]
        browser.close()
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="server URL, e.g. http://127.0.0.1:8777")
    ap.add_argument("--token")
    ap.add_argument("--username")
    ap.add_argument("--password")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    ap.add_argument("--only", nargs="*", choices=sorted(MAPS), default=sorted(MAPS))
    a = ap.parse_args()
    base = a.base.rstrip("/")
    if a.token:
        token = a.token
    elif a.username and a.password:
        token = token_for(base, a.username, a.password)
    else:
        ap.error("give --token, or --username and --password")
    for name, size in shoot(base, token, a.out, a.only):
        print(f"{name:18} {size / 1000:7.0f} kB  {a.out / (name + '.png')}")


if __name__ == "__main__":
    main()
