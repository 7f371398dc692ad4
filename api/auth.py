"""Bearer tokens (HS256 JWT with expiry) and the current principal."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import jwt

from layers.errors import Unauthorized
from layers.models import User
from layers.users import Principal, principal_of

ALGORITHM = "HS256"


def issue_token(user: User, *, secret: str, ttl_minutes: int, now: datetime | None = None) -> tuple[str, datetime]:
    """A signed token for ``user`` and its expiry time."""
    now = now or datetime.now(UTC)
    exp = now + timedelta(minutes=ttl_minutes)
    claims = {"sub": user.username, "iat": int(now.timestamp()), "exp": int(exp.timestamp()),
              "jti": secrets.token_hex(8)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM), exp


def username_from_token(token: str, *, secret: str) -> str:
    """The username a valid token names; :class:`Unauthorized` for expired or forged ones."""
    return token_subject(token, secret=secret)[0]


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
