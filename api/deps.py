"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import principal_for, username_from_token
from layers.db import Session, unit_of_work
from layers.errors import Forbidden, Unauthorized
from layers.settings import Settings
from layers.users import Principal, get_user

bearer = HTTPBearer(auto_error=False, description="token from POST /auth/token")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """One unit of work per request: committed when the route returns, else rolled back."""
    with unit_of_work(request.app.state.sessions) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


def get_principal(
    request: Request,
    session: SessionDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    if creds is None or creds.scheme.lower() != "bearer":
        raise Unauthorized("missing bearer token; get one from POST /auth/token")
    username = username_from_token(creds.credentials, secret=request.app.state.secret)
    user = get_user(session, username)
    return principal_for(user)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(*roles: str):
    """Dependency: the principal must hold one of ``roles`` (admin always passes)."""

    def check(p: PrincipalDep) -> Principal:
        if not p.has(*roles):
            raise Forbidden(f"needs one of the roles {', '.join(roles)}; you have {', '.join(sorted(p.roles))}")
        return p

    return Depends(check)
