"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

import anyio
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import Principals
from layers.db import PoolTimeout, Session, commit
from layers.errors import Forbidden, Unauthorized
from layers.settings import Settings
from layers.users import Principal

bearer = HTTPBearer(auto_error=False, description="token from POST /auth/token")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    async for session in _unit_of_work(request, request.app.state.sessions):
        yield session


async def get_read_session(request: Request) -> AsyncIterator[Session]:
    """A session for routes that only read: each statement is its own snapshot (autocommit).

    On PostgreSQL a transaction costs a ``BEGIN`` and a ``COMMIT`` round trip around the
    query; for the one or two reads of a lookup, a nearby search or a list page, that was a
    fifth of the server's time. Never use it for a route that writes.
    """
    sessions = request.app.state.read_sessions
    autocommit = sessions is not request.app.state.sessions
    async for session in _unit_of_work(request, sessions, autocommit=autocommit):
        yield session


async def _unit_of_work(request: Request, sessions: Callable[[], Session], *,
                        autocommit: bool = False) -> AsyncIterator[Session]:
    """One unit of work per request: committed when the route returns, else rolled back.

    **Database turns.** A request's session keeps its pooled connection from its first query to
    its commit, across several hops between the event loop and the thread pool. Unbounded, that
    deadlocks under load: every pool thread waits for a connection while every connection is
    held by a request waiting for a thread to finish on (seen at 1M leads: 40 threads, 20
    connections, all "idle in transaction", for good). So a request first takes one of
    ``db_concurrency`` turns (fewer than the pool's connections and the threads), waiting in
    the event loop — not in a thread — for at most ``db_wait_seconds``, then answers 503.

    The clean-up is shielded from cancellation: a client that disconnects mid-request must not
    strand its connection "idle in transaction". Commit (or rollback) runs in one thread-pool
    hop, none at all when the request never touched the database; the close after it has no
    transaction left to end, so it does not block the event loop. An ``autocommit`` session has
    no transaction to end at all: it is closed at once, with no hop.
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
            if not autocommit and session.in_transaction():
                await anyio.to_thread.run_sync(commit, session)
        except BaseException:
            if not autocommit and session.in_transaction():
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(session.rollback)
            raise
        finally:
            session.close()  # no transaction left: nothing blocks
    finally:
        turns.release()


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]


async def get_principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller, from the bearer token (see :class:`api.auth.Principals`).

    A token verified moments ago is answered in the event loop; otherwise one thread hop reads
    the user, in its own short session, so knowing who asks never takes a database turn:
    routes that need none (intake's group commit) hold none.
    """
    if creds is None or creds.scheme.lower() != "bearer":
        raise Unauthorized("missing bearer token; get one from POST /auth/token")
    return await principal_of_token(request, creds.credentials)


async def principal_of_token(request: Request, token: str) -> Principal:
    """The principal of ``token``, kept or resolved (for routes that take a token elsewhere)."""
    principals: Principals = request.app.state.principals
    p = principals.kept(token)
    return p if p is not None else await anyio.to_thread.run_sync(principals.resolve, token)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(*roles: str):
    """Dependency: the principal must hold one of ``roles`` (admin always passes)."""

    async def check(p: PrincipalDep) -> Principal:  # async: no thread hop for a set lookup
        if not p.has(*roles):
            raise Forbidden(f"needs one of the roles {', '.join(roles)}; you have {', '.join(sorted(p.roles))}")
        return p

    return Depends(check)
