"""Health and authentication."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request

from api.auth import issue_token
from api.deps import SessionDep, SettingsDep
from api.schemas import Health, Token
from layers import jurisdictions, migrate
from layers.errors import Unauthorized
from layers.users import authenticate

router = APIRouter(tags=["system"])

@router.get("/health", response_model=Health)
def health(session: SessionDep, settings: SettingsDep) -> Health:
    """Liveness and readiness: the database answers and its schema is current."""
    active = jurisdictions.active_version(session)
    rev = migrate.current_revision(session.get_bind().engine) or ""
    return Health(status="ok", backend=settings.backend,  # type: ignore[arg-type]
                  schema_revision=rev, active_boundary_layer=active.layer if active else None)

@router.post("/auth/token", response_model=Token)
def token(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    username: Annotated[str, Form(min_length=1, max_length=80)],
    password: Annotated[str, Form(min_length=1, max_length=200)],
) -> Token:
    """Exchange a username and password for a bearer token that expires."""

    user = authenticate(session, username, password)
    if user is None:
        raise Unauthorized("wrong username or password")
    tok, exp = issue_token(user, secret=request.app.state.secret, ttl_minutes=settings.token_ttl_minutes)
    return Token(access_token=tok, expires_at=exp)
