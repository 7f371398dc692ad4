"""Bearer tokens (HS256 JWT with expiry) and the current principal."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import jwt
from cachetools import TTLCache

from layers.db import Session
from layers.errors import Unauthorized
from layers.models import User
from layers.users import Principal, get_user, principal_of

ALGORITHM = "HS256"


def issue_token(user: User, *, secret: str, ttl_minutes: int, now: datetime | None = None) -> tuple[str, datetime]:
    """A signed token for ``user`` and its expiry time."""
    now = now or datetime.now(UTC)
    exp = now + timedelta(minutes=ttl_minutes)
    claims = {"sub": user.username, "iat": int(now.timestamp()), "exp": int(exp.timestamp()),
              "jti": secrets.token_hex(8)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM), exp


def token_subject(token: str, *, secret: str) -> tuple[str, float]:
    """The username a valid token names and its expiry (POSIX seconds).

    Raises :class:`Unauthorized` for expired, forged or malformed tokens.
    """
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired; sign in again") from None
    except jwt.InvalidTokenError:
        raise Unauthorized("invalid token") from None
    return str(claims["sub"]), float(claims["exp"])


def principal_for(user: User | None) -> Principal:
    """The principal of an active user; :class:`Unauthorized` otherwise."""
    if user is None or not user.active:
        raise Unauthorized("unknown or disabled user")
    return principal_of(user)


class Principals:
    """Who a bearer token speaks for: verified, read from the database, kept a few seconds.

    One per app, shared by every way a token arrives (the Authorization header, a map's
    ``?token=``, Open311's ``api_key``). A verified token and its user's roles and scope are
    kept for ``ttl`` seconds, so most requests spend neither a signature check nor a database
    round trip on who is asking; the token's expiry is still checked on every request, and only
    tokens of active users are kept. ``ttl=0`` reads the user on every request. The user is
    read in a short session of its own, so knowing who asks never holds a request's connection.
    Thread-safe: routes call :meth:`resolve` from the thread pool.
    """

    def __init__(self, sessions: Callable[[], Session], secret: str, ttl: float) -> None:
        self._sessions = sessions
        self._secret = secret
        self._kept: TTLCache[str, tuple[Principal, float]] | None = (
            TTLCache(maxsize=10_000, ttl=ttl) if ttl > 0 else None)
        self._lock = threading.Lock()

    def kept(self, token: str) -> Principal | None:
        """The principal of a token verified moments ago, without any I/O; ``None`` if not kept."""
        if self._kept is None:
            return None
        with self._lock:
            hit = self._kept.get(token)
        if hit is None:
            return None
        if hit[1] <= time.time():
            raise Unauthorized("token expired; sign in again")
        return hit[0]

    def resolve(self, token: str) -> Principal:
        """The principal of a valid token (may read the database: call it from a thread)."""
        p = self.kept(token)
        if p is not None:
            return p
        username, exp = token_subject(token, secret=self._secret)
        with self._sessions() as session:
            p = principal_for(get_user(session, username))  # unknown or disabled: never kept
        if self._kept is not None:
            with self._lock:
                self._kept[token] = (p, exp)
        return p
