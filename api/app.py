"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from typing import Any

from fastapi import FastAPI

from api import errors
from api.routers import jurisdictions, leads, reference, system, users
from layers import leads as lead_store
from layers.db import Session, make_engine, session_factory
from layers.leads import LeadIn
from layers.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for ``settings`` (read from the environment when omitted)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings)
        app.state.engine = engine
        app.state.sessions = session_factory(engine)
        try:
            yield
        finally:
            engine.dispose()

    app = FastAPI(
        title="leadgrid",
        version="0.1.0",
        summary="Supervision of pollution-prevention leads: intake, jurisdiction assignment, "
        "routing, deadlines and maps.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.secret = settings.resolved_secret()

    def intake(session: Session, items: list[LeadIn], *, actor: str, now: datetime) -> Any:
        return lead_store.submit(session, items, actor=actor, now=now,
                                 tolerance_m=settings.assign_tolerance_m,
                                 near_border_m=settings.near_border_m)

    app.state.intake = partial(intake)
    errors.install(app)
    for r in (system.router, leads.router, jurisdictions.router, reference.router, users.router):
        app.include_router(r)
    return app
