"""Alembic environment: runs on SpatiaLite and PostGIS with GeoAlchemy2's helpers."""

from __future__ import annotations

from alembic import context
from geoalchemy2 import alembic_helpers

from layers import monitoring_store as _monitoring_store  # noqa: F401 - registers monitoring tables
from layers.models import Base
from layers.workflow import store as _workflow_store  # noqa: F401 - registers workflow tables

config = context.config

# Tables SpatiaLite creates for itself; autogenerate must never propose to drop them.
SPATIALITE_INTERNAL = {
    "sql_statements_log", "ElementaryGeometries", "SpatialIndex", "KNN", "KNN2", "data_licenses",
}


def include_object(obj, name, obj_type, reflected, compare_to):
    if obj_type == "table" and reflected and compare_to is None and name in SPATIALITE_INTERNAL:
        return False
    return alembic_helpers.include_object(obj, name, obj_type, reflected, compare_to)


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # pragma: no cover - always passed by layers.migrate
        raise RuntimeError("run migrations through `leadgrid db upgrade`")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        include_object=include_object,
        process_revision_directives=alembic_helpers.writer,
        render_item=alembic_helpers.render_item,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
