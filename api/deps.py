"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import principal_for, username_from_token
from layers.db import Session, commit
from layers.errors import Forbidden, Unauthorized
from layers.settings import Settings
from layers.users import Principal, get_user

bearer = HTTPBearer(auto_error=False, description="token from POST /auth/token")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One unit of work per request: committed when the route returns, else rolled back.

    An async generator whose clean-up is shielded from cancellation: when a client disconnects
    mid-request, a plain generator dependency could be abandoned with its transaction open,
    its pooled connection stranded "idle in transaction"; under overload those leaks emptied the
    pool and wedged the server for good. The blocking commit, rollback and close run in the
    thread pool, like the route itself.
    """
    session = request.app.state.sessions()
    try:
        yield session
        await anyio.to_thread.run_sync(commit, session)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(session.rollback)
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(session.close)


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
