"""Create or migrate the database named by the settings (Alembic, both backends)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def _prepare(engine: Engine) -> None:
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS postgis"))
    else:
        with engine.begin() as conn:
            has_meta = conn.exec_driver_sql("SELECT CheckSpatialMetaData()").scalar()
            if not has_meta:
                # WGS84 SRIDs only: full EPSG init takes seconds and megabytes we never use.
                conn.exec_driver_sql("SELECT InitSpatialMetaData(1, 'WGS84')")


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Bring the schema to ``revision``; safe to run any number of times.

    Parameters
    ----------
    engine
        Engine of either backend.
    revision
        Alembic revision, ``"head"`` by default.

    Returns
    -------
    str
        The revision the database is at afterwards.
    """
    _prepare(engine)
    cfg = _config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return current_revision(engine) or ""


def downgrade(engine: Engine, revision: str) -> None:
    """Step the schema back to ``revision`` (``"base"`` drops everything)."""
    cfg = _config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    """The revision stamped in the database, or ``None`` for an empty one."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    """The newest revision shipped with this code."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    return head or ""


def autogenerate(engine: Engine, message: str) -> None:
    """Write a new revision from the difference between models and database (developers)."""
    cfg = _config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.revision(cfg, message=message, autogenerate=True)
