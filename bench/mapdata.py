"""Time the map queries and pages served from the database at 10,000 and 100,000 leads (SpatiaLite).

Prints, per size: the lead query (:func:`layers.mapdata.lead_frame`), the per-township and
per-county aggregates, and the whole ``GET /maps/distribution`` and ``GET /maps/status`` responses
(query + render + CSP), with page sizes. Leads are filed through the normal intake on the tiny
layer of the tests.

Run: ``.venv/bin/python bench/mapdata.py [N ...]``
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastapi.testclient import TestClient  # noqa: E402

from api.app import create_app  # noqa: E402
from layers import jurisdictions, mapdata, migrate, routing, users  # noqa: E402
from layers.db import make_engine, session_factory  # noqa: E402
from layers.leads import LeadFilter  # noqa: E402
from layers.settings import Settings  # noqa: E402
from layers.users import SYSTEM  # noqa: E402
from tests.api.mapseed import seed_leads  # noqa: E402
from tests.conftest import DATA_DIR, NOW, Db, write_tiny_layer  # noqa: E402


def build(n: int, folder: Path) -> tuple[Db, Settings]:
    url = f"sqlite:///{folder / 'bench.sqlite'}"
    settings = Settings(database_url=url, secret_key="bench-" + "b" * 40)
    engine = make_engine(settings)
    migrate.upgrade(engine)
    db = Db("spatialite", url, engine, session_factory(engine))
    paths = write_tiny_layer(folder / "layer")
    with db.uow() as s:
        routing.seed(s, DATA_DIR, now=NOW)
        for level in ("city", "county", "township"):
            jurisdictions.import_layer(s, paths[level], level=level, datum="wgs84",
                                       mapping="code=code,name=name" + (",parent=parent" if level != "city" else ""),
                                       layer="tiny", actor="bench", now=NOW)
        jurisdictions.activate(s, "tiny", actor="bench", now=NOW)
        users.add_user(s, "bench", "bench-password-1", ["leader"])
    seed_leads(db, n)
    return db, settings


def timed(fn, repeat: int = 3) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 100_000]
    print(f"{'leads':>8} {'lead query':>11} {'towns agg':>10} {'status agg':>11} "
          f"{'GET distribution':>17} {'size':>8} {'GET status':>11}")
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            db, settings = build(n, Path(tmp))
            with db.sessions() as s:
                tq, _ = timed(lambda s=s: mapdata.lead_frame(s, SYSTEM, LeadFilter()))
                ta, _ = timed(lambda s=s: mapdata.area_frame(s, SYSTEM, LeadFilter()))
                ts, _ = timed(lambda s=s: mapdata.status_frame(s, SYSTEM, LeadFilter(), now=datetime.now(UTC)))
            with TestClient(create_app(settings)) as c:
                tok = c.post("/auth/token", data={"username": "bench", "password": "bench-password-1"}).json()
                h = {"Authorization": f"Bearer {tok['access_token']}"}
                td, r = timed(lambda c=c, h=h: c.get("/maps/distribution", headers=h), repeat=2)
                tst, _ = timed(lambda c=c, h=h: c.get("/maps/status", headers=h), repeat=2)
            db.engine.dispose()
            size = len(r.content)  # type: ignore[attr-defined]
            print(f"{n:>8,} {tq:>10.2f}s {ta:>9.2f}s {ts:>10.2f}s {td:>16.2f}s {size / 1e6:>6.2f}MB {tst:>10.2f}s")


if __name__ == "__main__":
    main()
