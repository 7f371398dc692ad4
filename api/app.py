"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from functools import partial
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api import errors, limits
from api.auth import Principals
from api.routers import (
    boundaries,
    exports,
    jurisdictions,
    leads,
    maps,
    nearby,
    open311,
    public,
    reference,
    system,
    users,
    workflow,
)
from api.routers import monitoring as monitoring_routes
from layers import jurisdictions as boundary_store
from layers import leads as lead_store
from layers.db import Session, make_engine, session_factory
from layers.intake_batch import IntakeBatcher
from layers.leads import LeadIn
from layers.routing import Router
from layers.settings import Settings
from maps.assets import ASSET_URL_PREFIX, asset_root, missing_assets

log = logging.getLogger("leadgrid")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for ``settings`` (read from the environment when omitted)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings)
        app.state.engine = engine
        app.state.sessions = session_factory(engine)
        app.state.read_sessions = (session_factory(engine.execution_options(isolation_level="AUTOCOMMIT"))
                                   if engine.dialect.name == "postgresql" else app.state.sessions)
        app.state.db_turns = anyio.Semaphore(settings.db_concurrency)
        app.state.principals = Principals(app.state.sessions, app.state.secret, settings.auth_cache_seconds)
        app.state.batcher = IntakeBatcher(
            app.state.sessions, lambda s, items, actor, now: intake(s, list(items), actor=actor, now=now),
            window_s=settings.intake_batch_window_ms / 1000.0)
        if settings.gc_freeze:
            await anyio.to_thread.run_sync(_warm, app.state.sessions)
            _freeze_heap()
        # Periodic escalation only where asked (``leadgrid serve``), never in tests' clients.
        escalation = (asyncio.create_task(workflow.escalation_loop(app, settings.escalation_interval_s))
                      if getattr(app.state, "escalate_periodically", False) else None)
        try:
            yield
        finally:
            if escalation is not None:
                escalation.cancel()
                with suppress(asyncio.CancelledError):
                    await escalation
            engine.dispose()

    app = FastAPI(
        title="leadgrid",
        version="0.1.0",
        summary="Supervision of pollution-prevention leads: intake, jurisdiction assignment, "
        "routing, deadlines and maps.",
        lifespan=lifespan,
        telemetry=None if settings.otel else {"tracing": False, "metrics": False, "logs": False,
                                              "operation_spans": False},
    )
    app.state.settings = settings
    app.state.secret = settings.resolved_secret()

    def intake(session: Session, items: list[LeadIn], *, actor: str, now: datetime) -> Any:
        return lead_store.submit(session, items, actor=actor, now=now,
                                 tolerance_m=settings.assign_tolerance_m,
                                 near_border_m=settings.near_border_m)

    app.state.intake = partial(intake)
    errors.install(app)
    limits.install(app)
    # nearby before leads: /leads/nearby must match before /leads/{ref}.
    for r in (system.router, nearby.router, leads.router, jurisdictions.router, reference.router, users.router,
              open311.router, public.router, exports.router, maps.router, workflow.router, boundaries.router,
              monitoring_routes.router):
        app.include_router(r)
    _mount_map_assets(app)
    return app


def _warm(sessions: Callable[[], Session]) -> None:
    """Load the boundary index and the routing rules now, before the heap is frozen."""
    try:
        with sessions() as session:
            boundary_store.INDEX_CACHE.get(session)
            Router.current(session)
    except Exception as exc:  # an empty or unmigrated database: they load on first use instead
        log.warning("start-up warm-up skipped (%s); caches load on first use", exc)


def _freeze_heap() -> None:
    """Exempt everything loaded so far from the garbage collector's scans.

    A worker's heap after start-up (libraries, the boundary index, compiled statements) is a
    few million objects that live as long as the process. Every full collection walked all of
    them: a 130-310 ms pause every few seconds under load, which was the whole p99 of every call.
    Frozen, a full collection scans only what requests created since.
    """
    gc.collect()
    gc.freeze()
    log.info("heap frozen after start-up: %d objects exempt from collection", gc.get_freeze_count())


def _mount_map_assets(app: FastAPI) -> None:
    """Serve the maps' JS/CSS ourselves (offline networks); warn, never crash, when missing."""
    missing = missing_assets()
    if missing:
        # The API stays useful without maps; the map pages then load without Leaflet.
        log.error("map assets missing under %s (%s ...): run scripts/assets.sh; map pages will not draw",
                  asset_root(), ", ".join(missing[:3]))
    if asset_root().is_dir():
        app.mount(ASSET_URL_PREFIX, StaticFiles(directory=asset_root()), name="vendor")
