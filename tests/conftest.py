"""Shared fixtures: every storage test runs on SpatiaLite *and* PostGIS.

PostGIS comes from ``LEADGRID_TEST_POSTGRES_URL`` (``make test`` sets it after making sure a
server with PostGIS runs). Without it the PostGIS half is skipped, except under CI or
``LEADGRID_REQUIRE_POSTGIS=1``, where a missing PostGIS is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import box
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from layers import migrate, routing
from layers.db import make_engine, session_factory, unit_of_work
from layers.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DATA_DIR = REPO / "data"
NOW = datetime(2026, 6, 1, 2, 0, tzinfo=UTC)

BACKENDS = ["spatialite", "postgis"]


def _pg_admin_url() -> str | None:
    return os.environ.get("LEADGRID_TEST_POSTGRES_URL")


def _require_postgis() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("LEADGRID_REQUIRE_POSTGIS") == "1"


@dataclass
class Db:
    """A migrated, empty database of one backend."""

    backend: str
    url: str
    engine: Engine
    sessions: sessionmaker[Session]

    def settings(self, **kw: Any) -> Settings:
        # Tests build many apps in one process: freezing each one's heap would keep it for good.
        kw.setdefault("gc_freeze", False)
        return Settings(database_url=self.url, secret_key="test-secret-key-" + "x" * 32, **kw)

    def uow(self) -> Any:
        return unit_of_work(self.sessions)


def _new_pg_database(admin_url: str) -> str:
    name = f"leadgrid_t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


def _drop_pg_database(admin_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session", params=BACKENDS)
def migrated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Db]:
    """One migrated database per backend for the whole session (template for :func:`db`)."""
    backend = request.param
    if backend == "postgis":
        admin = _pg_admin_url()
        if not admin:
            if _require_postgis():
                pytest.fail("PostGIS required (CI) but LEADGRID_TEST_POSTGRES_URL is not set; run `make test`")
            pytest.skip("PostGIS not configured: set LEADGRID_TEST_POSTGRES_URL or run `make test`")
        url = _new_pg_database(admin)
        engine = make_engine(Settings(database_url=url))
        migrate.upgrade(engine)
        yield Db(backend, url, engine, session_factory(engine))
        engine.dispose()
        _drop_pg_database(admin, url)
    else:
        path = tmp_path_factory.mktemp("spatialite") / "template.sqlite"
        url = f"sqlite:///{path}"
        engine = make_engine(Settings(database_url=url))
        migrate.upgrade(engine)
        engine.dispose()
        yield Db(backend, url, engine, session_factory(engine))


@pytest.fixture
def db(migrated: Db, tmp_path: Path) -> Iterator[Db]:
    """An empty, migrated database of the current backend, private to one test."""
    from layers import geocoder
    from layers.jurisdictions import INDEX_CACHE

    INDEX_CACHE.clear()
    geocoder.clear()
    if migrated.backend == "spatialite":
        path = tmp_path / "leadgrid.sqlite"
        shutil.copy(migrated.url.removeprefix("sqlite:///"), path)
        url = f"sqlite:///{path}"
        engine = make_engine(Settings(database_url=url))
        yield Db("spatialite", url, engine, session_factory(engine))
        engine.dispose()
    else:
        yield migrated
        with migrated.engine.begin() as c:
            names = [t for t in c.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename NOT IN ('alembic_version', 'spatial_ref_sys')")).scalars()]
            c.execute(text("TRUNCATE " + ", ".join(f'"{n}"' for n in names) + " RESTART IDENTITY CASCADE"))
    INDEX_CACHE.clear()
    geocoder.clear()
    routing.clear_cache()


# Tiny literal layer near Xuzhou (lon 117, lat 34): a city made of two counties sharing the
# edge lon = 117.10, each split into two townships along lat = 34.05. Metres matter here:
# 0.01° of longitude is about 920 m at this latitude.
CITY = box(117.00, 34.00, 117.20, 34.10)
COUNTIES = {"320001": box(117.00, 34.00, 117.10, 34.10), "320002": box(117.10, 34.00, 117.20, 34.10)}
TOWNSHIPS = {
    "320001001": ("320001", box(117.00, 34.00, 117.10, 34.05)),
    "320001002": ("320001", box(117.00, 34.05, 117.10, 34.10)),
    "320002001": ("320002", box(117.10, 34.00, 117.20, 34.05)),
    "320002002": ("320002", box(117.10, 34.05, 117.20, 34.10)),
}


def write_tiny_layer(folder: Path) -> dict[str, Path]:
    """The tiny literal layer as three GeoJSON files (city, county, township)."""
    import geopandas as gpd

    folder.mkdir(parents=True, exist_ok=True)
    frames = {
        "city": gpd.GeoDataFrame({"code": ["320000"], "name": ["测试市"]}, geometry=[CITY], crs=4326),
        "county": gpd.GeoDataFrame({"code": list(COUNTIES), "name": ["甲县", "乙县"],
                                    "parent": ["320000", "320000"]},
                                   geometry=list(COUNTIES.values()), crs=4326),
        "township": gpd.GeoDataFrame({"code": list(TOWNSHIPS),
                                      "name": ["甲一镇", "甲二镇", "乙一镇", "乙二镇"],
                                      "parent": [v[0] for v in TOWNSHIPS.values()]},
                                     geometry=[v[1] for v in TOWNSHIPS.values()], crs=4326),
    }
    out = {}
    for level, frame in frames.items():
        p = folder / f"{level}.geojson"
        frame.to_file(p, driver="GeoJSON", engine="pyogrio")
        out[level] = p
    return out


@pytest.fixture
def seeded(db: Db, tmp_path: Path) -> Db:
    """``db`` with reference data and the tiny layer imported and active."""
    from layers import jurisdictions

    paths = write_tiny_layer(tmp_path / "layer")
    with db.uow() as s:
        routing.seed(s, DATA_DIR, now=NOW)
        for level in ("city", "county", "township"):
            jurisdictions.import_layer(
                s, paths[level], level=level, datum="wgs84",
                mapping="code=code,name=name" + (",parent=parent" if level != "city" else ""),
                layer="tiny", actor="test", now=NOW,
            )
        jurisdictions.activate(s, "tiny", actor="test", now=NOW)
    return db


@pytest.fixture(autouse=True, scope="session")
def _fast_password_hashing() -> Iterator[None]:
    """Cheap argon2 parameters in tests only; production keeps the library's defaults."""
    from argon2 import PasswordHasher

    from layers import users

    saved = users._hasher
    users._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    yield
    users._hasher = saved
