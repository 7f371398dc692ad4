"""PostGIS connection pool: a connection cut while idle is replaced before a request sees it."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from layers.db import make_engine
from tests.conftest import Db


def _pid(engine) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as c:
        return int(c.scalar(text("SELECT pg_backend_pid()")))


def _cut(url: str, pid: int) -> None:
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        assert c.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    admin.dispose()


# Pool pings concern PostGIS only (SpatiaLite is a file).
pytestmark = pytest.mark.parametrize("migrated", ["postgis"], indirect=True)


def test_idle_connection_cut_by_the_server_is_replaced(db: Db) -> None:
    engine = make_engine(db.settings(db_idle_ping_seconds=0))
    try:
        first = _pid(engine)
        assert _pid(engine) == first  # the pool reuses its connection
        _cut(db.url, first)
        second = _pid(engine)  # the ping notices, the pool reconnects, the query succeeds
        assert second != first
    finally:
        engine.dispose()


def test_busy_connections_are_not_pinged(db: Db) -> None:
    """The converse, so the test above cannot pass by luck: a connection used moments ago is
    trusted (no round trip), so one cut in between fails the next statement."""
    engine = make_engine(db.settings(db_idle_ping_seconds=3600))
    try:
        first = _pid(engine)
        _cut(db.url, first)
        with pytest.raises(OperationalError):
            _pid(engine)
        assert _pid(engine) != first  # and the pool recovers on the following checkout
    finally:
        engine.dispose()
