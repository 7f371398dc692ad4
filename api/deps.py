"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated

import anyio
from cachetools import TTLCache
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import principal_for, token_subject
from layers.db import PoolTimeout, Session, commit
from layers.errors import Forbidden, Unauthorized
from layers.settings import Settings
from layers.users import Principal, get_user

bearer = HTTPBearer(auto_error=False, description="token from POST /auth/token")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def _finish(session: Session) -> None:
    try:
        commit(session)
    finally:
        session.close()


def _abandon(session: Session) -> None:
    try:
        session.rollback()
    finally:
        session.close()


async def get_session(request: Request) -> AsyncIterator[Session]:
    async for session in _unit_of_work(request, request.app.state.sessions):
        yield session


async def get_read_session(request: Request) -> AsyncIterator[Session]:
    """A session for routes that only read: each statement is its own snapshot (autocommit).

    On PostgreSQL a transaction costs a ``BEGIN`` and a ``COMMIT`` round trip around the
    query; for the one or two reads of a lookup, a nearby search or a list page, that was a
    fifth of the server's time. Never use it for a route that writes.
    """
    async for session in _unit_of_work(request, request.app.state.read_sessions):
        yield session


async def _unit_of_work(request: Request, sessions: Callable[[], Session]) -> AsyncIterator[Session]:
    """One unit of work per request: committed when the route returns, else rolled back.

    **Database turns.** A request's session keeps its pooled connection from its first query to
    its commit, across several hops between the event loop and the thread pool. Unbounded, that
    deadlocks under load: every pool thread waits for a connection while every connection is
    held by a request waiting for a thread to finish on (seen at 1M leads: 40 threads, 20
    connections, all "idle in transaction", for good). So a request first takes one of
    ``db_concurrency`` turns (fewer than the pool's connections and the threads), waiting in
    the event loop — not in a thread — for at most ``db_wait_seconds``, then answers 503.

    The clean-up is shielded from cancellation: a client that disconnects mid-request must not
    strand its connection "idle in transaction". Commit (or rollback) and close run in one
    thread-pool hop, and none at all when the request never touched the database.
    """
    turns: anyio.Semaphore = request.app.state.db_turns
    try:
        with anyio.fail_after(request.app.state.settings.db_wait_seconds):
            await turns.acquire()
    except TimeoutError:
        raise PoolTimeout("every database turn stayed busy; the service is over capacity") from None
    try:
        session = sessions()
        try:
            yield session
            if session.in_transaction():
                await anyio.to_thread.run_sync(_finish, session)
        except BaseException:
            if session.in_transaction():
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_abandon, session)
            raise
        finally:
            session.close()  # no transaction left: nothing blocks
    finally:
        turns.release()


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]


def _load_principal(request: Request, username: str) -> Principal:
    with request.app.state.sessions() as session:  # read only; one thread hop, no turn needed
        return principal_for(get_user(session, username))


async def get_principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller, from the bearer token and the user's stored roles and scope.

    A verified token and its user's roles and scope are kept per worker for
    ``auth_cache_seconds`` (a few seconds), so most requests spend neither a signature check
    nor a database round trip on who is asking; the token's expiry is still checked on every
    request, and only tokens of active users are kept. The user is read in its own short
    session (within one thread hop), so knowing who asks never takes a database turn: routes
    that need none (intake's group commit) hold none.
    """
    if creds is None or creds.scheme.lower() != "bearer":
        raise Unauthorized("missing bearer token; get one from POST /auth/token")
    token = creds.credentials
    known: TTLCache[str, tuple[Principal, float]] | None = request.app.state.principals
    hit = known.get(token) if known is not None else None
    if hit is not None:
        if hit[1] > time.time():
            return hit[0]
        raise Unauthorized("token expired; sign in again")
    username, exp = token_subject(token, secret=request.app.state.secret)
    # Unauthorized for unknown or disabled users: never kept.
    p = await anyio.to_thread.run_sync(_load_principal, request, username)
    if known is not None:
        known[token] = (p, exp)
    return p


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(*roles: str):
    """Dependency: the principal must hold one of ``roles`` (admin always passes)."""

    def check(p: PrincipalDep) -> Principal:
        if not p.has(*roles):
            raise Forbidden(f"needs one of the roles {', '.join(roles)}; you have {', '.join(sorted(p.roles))}")
        return p

    return Depends(check)
