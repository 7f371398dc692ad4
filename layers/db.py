"""Engines for both backends and the unit of work.

SpatiaLite needs an ``sqlite3`` module that can load extensions; the stock CPython build here
cannot, so the engine uses ``pysqlite3`` (``pysqlite3-binary``) when it is installed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
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
from sqlalchemy import Engine, Table, create_engine, event, text
from sqlalchemy.exc import DisconnectionError, IntegrityError
from sqlalchemy.exc import TimeoutError as _SATimeout
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from layers.errors import Conflict
from layers.settings import Settings

__all__ = ["Session", "make_engine", "session_factory", "unit_of_work"]

SPATIALITE_LIBRARY = "mod_spatialite"


PoolTimeout = _SATimeout
"""Raised when no pooled connection frees up in time (the service is over capacity)."""


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
    engine = create_engine(url, echo=settings.echo_sql, pool_size=10)
    _ping_when_idle(engine, settings.db_idle_ping_seconds)
    return engine


_IDLE_SINCE = "leadgrid.idle_since"


def _ping_when_idle(engine: Engine, after_s: float) -> None:
    """Test a pooled connection before use when it sat unused for ``after_s`` seconds.

    SQLAlchemy's ``pool_pre_ping`` tests it on *every* checkout: one more round trip per
    request, about a tenth of a busy server's time. A connection that served a request
    moments ago is alive; one that sat idle may have been cut (database restart, firewall),
    and is then replaced before the request sees it. Raising ``DisconnectionError`` here makes
    the pool discard the connection and check out a fresh one.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_conn: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since < after_s:
            return  # new, or busy a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError(f"pooled connection idle {time.monotonic() - since:.0f} s is gone: {exc}") from exc
        if not alive:
            raise DisconnectionError("pooled connection failed its ping")


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
        commit(session)
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def commit(session: Session) -> None:
    """Commit, turning a lost optimistic lock or a constraint violation into :class:`Conflict`.

    Parameters
    ----------
    session
        The unit of work to commit; rolled back when the commit fails.
    """
    try:
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


COPY_THRESHOLD = 64
"""Below this many rows a pipelined ``executemany`` beats setting up a COPY."""


def reserve_ids(session: Session, table: Table, n: int) -> list[int] | None:
    """Draw ``n`` ids from ``table``'s id sequence on PostgreSQL (``None`` elsewhere).

    With the ids known before the insert, a bulk load needs no read-back query and can use COPY.

    Parameters
    ----------
    session
        The open unit of work.
    table
        A table whose ``id`` column is a serial/identity column.
    n
        How many ids.

    Returns
    -------
    list of int or None
        Ascending ids on PostgreSQL; ``None`` on SQLite, where the caller lets the insert assign them.
    """
    if n <= 0 or session.get_bind().dialect.name != "postgresql":
        return None
    rows = session.execute(
        text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"),
        {"t": table.name, "n": n},
    )
    return sorted(int(r[0]) for r in rows)


def bulk_insert(session: Session, table: Table, rows: Sequence[Mapping[str, Any]], *, chunk: int = 5000) -> int:
    """Insert many rows in the caller's transaction: ``COPY … FROM STDIN`` on PostgreSQL.

    psycopg's ``executemany`` sends one statement per row (pipelined); COPY streams the whole set
    in one command, several times faster. Values go through each column type's bind processing
    first (UTC datetimes, JSON), so the stored values are exactly what an ``INSERT`` would store.
    On SQLite, and for fewer than :data:`COPY_THRESHOLD` rows, it is a plain ``executemany``.

    Parameters
    ----------
    session
        The open unit of work.
    table
        Target table.
    rows
        Dicts with the same keys (column names) in every row.
    chunk
        Rows per statement on SQLite.

    Returns
    -------
    int
        Rows written.

    Raises
    ------
    sqlalchemy.exc.IntegrityError
        A constraint was violated (as an ``INSERT`` would raise), so callers and
        :func:`unit_of_work` handle both paths alike.
    """
    if not rows:
        return 0
    conn = session.connection()
    dialect = conn.dialect
    if dialect.name != "postgresql" or len(rows) < COPY_THRESHOLD:
        for start in range(0, len(rows), chunk):
            session.execute(table.insert(), list(rows[start:start + chunk]))
        return len(rows)
    columns = list(rows[0].keys())
    unknown = [c for c in columns if c not in table.c]
    if unknown:
        raise ValueError(f"bulk_insert into {table.name}: unknown columns {unknown}")
    # Python-side column defaults (``default=``) are applied by INSERT compilation, not by the
    # server, so COPY must fill them in; server defaults apply to omitted columns by themselves.
    defaults: dict[str, Any] = {}
    for col in table.c:
        d = col.default
        if col.name in columns or d is None or getattr(d, "is_sequence", False):
            continue
        if getattr(d, "is_scalar", False):
            defaults[col.name] = d.arg  # type: ignore[attr-defined]
        elif getattr(d, "is_callable", False):
            defaults[col.name] = d.arg(None)  # type: ignore[attr-defined]
    if defaults:
        rows = [{**defaults, **r} for r in rows]
        columns = list(rows[0].keys())
    procs = [table.c[c].type.dialect_impl(dialect).bind_processor(dialect) for c in columns]
    prep = dialect.identifier_preparer
    sql = f"COPY {prep.format_table(table)} ({', '.join(prep.quote(c) for c in columns)}) FROM STDIN"
    raw: Any = conn.connection.driver_connection
    import psycopg  # PostgreSQL only; imported here so SpatiaLite installs need no libpq

    try:
        with raw.cursor() as cur, cur.copy(sql) as copy:
            for r in rows:
                copy.write_row([p(r[c]) if p is not None else r[c] for c, p in zip(columns, procs, strict=True)])
    except psycopg.errors.IntegrityError as exc:
        raise IntegrityError(sql, None, exc) from exc
    return len(rows)


def write_lock(session: Session) -> None:
    """On SQLite, take the database's write lock now rather than at the first write.

    SQLite starts a transaction as a reader and upgrades at its first write; what it read
    before that may be stale by then. A transaction that must read and write one consistent
    state (intake reading the active boundary version, activation reading the leads it
    re-dispatches) calls this first. A no-op on PostgreSQL, where row locks do that job.

    Parameters
    ----------
    session
        The open unit of work.
    """
    if session.get_bind().dialect.name == "sqlite":
        # An UPDATE that matches nothing still opens a write transaction (RESERVED lock).
        session.execute(text("UPDATE audit_head SET seq = seq WHERE 0"))
