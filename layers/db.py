"""Engines for both backends and the unit of work.

SpatiaLite needs an ``sqlite3`` module that can load extensions; the stock CPython build here
cannot, so the engine uses ``pysqlite3`` (``pysqlite3-binary``) when it is installed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# GDAL (inside the pyogrio wheel) must be loaded before the first SpatiaLite connection: when
# it is loaded after mod_spatialite, the two sets of system libraries (SQLite, PROJ, GEOS) they
# bring clash and the interpreter crashes at exit with a double free. Importing it here, once,
# fixes the order for every program that opens a database.
import pyogrio  # noqa: F401  (imported for its side effect on library load order)
import pyproj  # noqa: F401
import shapely  # noqa: F401
from geoalchemy2.admin.dialects.sqlite import load_spatialite_driver
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from layers.errors import Conflict
from layers.settings import Settings

__all__ = ["Session", "make_engine", "session_factory", "unit_of_work"]

SPATIALITE_LIBRARY = "mod_spatialite"


class SpatialiteMissing(RuntimeError):
    """The SpatiaLite extension or an extension-capable sqlite3 module is missing."""


def _sqlite_module() -> Any:
    try:
        from pysqlite3 import dbapi2
    except ImportError:  # pragma: no cover - only on platforms without the wheel
        import sqlite3 as dbapi2
    return dbapi2


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    try:
        load_spatialite_driver(dbapi_conn)
    except Exception as exc:  # the driver raises bare sqlite errors; name the fix instead
        raise SpatialiteMissing(
            "cannot load the SpatiaLite extension "
            f"({os.environ.get('SPATIALITE_LIBRARY_PATH')}): {exc}. "
            "Install it with: sudo apt-get install -y libsqlite3-mod-spatialite"
        ) from exc
    # WAL lets the web server read while an import writes; FKs are off by default in SQLite.
    dbapi_conn.execute("PRAGMA foreign_keys = ON")
    dbapi_conn.execute("PRAGMA journal_mode = WAL")
    dbapi_conn.execute("PRAGMA busy_timeout = 30000")
    dbapi_conn.execute("PRAGMA synchronous = NORMAL")


def make_engine(settings: Settings) -> Engine:
    """Create the engine for ``settings.database_url`` (SpatiaLite file or PostGIS).

    Parameters
    ----------
    settings
        Service settings; ``database_url`` picks the backend.

    Returns
    -------
    sqlalchemy.Engine
        Ready to use; SpatiaLite connections have the extension loaded.
    """
    url = settings.database_url
    if url.startswith("sqlite"):
        os.environ.setdefault("SPATIALITE_LIBRARY_PATH", SPATIALITE_LIBRARY)
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            module=_sqlite_module(),
            echo=settings.echo_sql,
            connect_args={"timeout": 30, "check_same_thread": False},
        )
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    return create_engine(url, echo=settings.echo_sql, pool_pre_ping=True, pool_size=10)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: everything in the block commits together or not at all.

    Parameters
    ----------
    factory
        From :func:`session_factory`.

    Yields
    ------
    Session
        Committed on normal exit, rolled back on any exception.
    """
    session = factory()
    try:
        yield session
        session.commit()
    except StaleDataError as exc:
        session.rollback()
        raise Conflict("the record was changed by someone else; reload and retry") from exc
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(
            "the change conflicts with stored data (duplicate or missing reference): "
            + str(exc.orig).splitlines()[0]
        ) from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
