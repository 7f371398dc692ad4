"""Users, password hashing (argon2) and scopes.

A user's *scope* is a set of jurisdiction codes (any level) and/or body codes. Empty means the
whole city. When both are set, a lead must match both (a county's environment bureau sees its
own body's leads in its own county). Scope is applied inside queries (:func:`lead_scope_clause`),
never by filtering results afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import ColumnElement, and_, false, or_, select, true
from sqlalchemy.orm import Session

from layers.errors import Conflict, Invalid
from layers.models import Body, Lead, Role, User

_hasher = PasswordHasher()
USERNAME = re.compile(r"^[A-Za-z0-9_.\-]{3,80}$")
MIN_PASSWORD = 10


@dataclass(frozen=True)
class Principal:
    """Who is acting: the authenticated user's identity, roles and scope."""

    username: str
    roles: frozenset[str]
    scope_codes: frozenset[str] = field(default_factory=frozenset)
    scope_bodies: frozenset[str] = field(default_factory=frozenset)

    @property
    def citywide(self) -> bool:
        return not self.scope_codes and not self.scope_bodies

    def has(self, *roles: str) -> bool:
        """True when the principal holds any of ``roles`` (admin holds all)."""
        return Role.admin.value in self.roles or bool(self.roles.intersection(roles))


SYSTEM = Principal("system", frozenset({Role.admin.value}))


def hash_password(password: str) -> str:
    """Argon2id hash of ``password`` (refuses passwords shorter than 10 characters)."""
    if len(password) < MIN_PASSWORD:
        raise Invalid("password", "*" * len(password), f"at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def check_password(stored_hash: str, password: str) -> bool:
    """Constant-time verification; never raises for a wrong password."""
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _validate_roles(roles: Iterable[str]) -> list[str]:
    allowed = [r.value for r in Role]
    out = []
    for r in roles:
        if r not in allowed:
            raise Invalid("roles", r, f"one of {', '.join(allowed)}")
        out.append(r)
    if not out:
        raise Invalid("roles", [], f"at least one of {', '.join(allowed)}")
    return sorted(set(out))


def add_user(
    session: Session,
    username: str,
    password: str,
    roles: Iterable[str],
    *,
    display_name: str = "",
    scope_codes: Iterable[str] = (),
    scope_bodies: Iterable[str] = (),
) -> User:
    """Create a user; the username must be new, roles and bodies must exist.

    Parameters
    ----------
    session
        Unit of work.
    username
        3–80 characters of ``A-Z a-z 0-9 _ . -``.
    password
        At least 10 characters; only its argon2 hash is stored.
    roles
        Subset of :class:`layers.models.Role`.
    display_name, scope_codes, scope_bodies
        Scope: jurisdiction codes of any level and/or body codes (empty = whole city).

    Returns
    -------
    User
        The new row (flushed, with its id).
    """
    if not USERNAME.match(username):
        raise Invalid("username", username, "3-80 characters of letters, digits, _ . -")
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise Conflict(f"user {username!r} already exists", field="username")
    bodies = sorted(set(scope_bodies))
    if bodies:
        known = set(session.scalars(select(Body.code).where(Body.code.in_(bodies))))
        for b in bodies:
            if b not in known:
                raise Invalid("scope_bodies", b, "a known body code (see GET /bodies)")
    user = User(
        username=username,
        display_name=display_name or username,
        password_hash=hash_password(password),
        roles=_validate_roles(roles),
        scope_codes=sorted(set(scope_codes)),
        scope_bodies=bodies,
    )
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, username: str) -> User | None:
    """The user with this username, if any."""
    return session.scalar(select(User).where(User.username == username))


def principal_of(user: User) -> Principal:
    """The :class:`Principal` for a stored user."""
    return Principal(
        username=user.username,
        roles=frozenset(user.roles or ()),
        scope_codes=frozenset(user.scope_codes or ()),
        scope_bodies=frozenset(user.scope_bodies or ()),
    )


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user with this username and password, else ``None``."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        # Hash anyway so timing does not reveal which usernames exist.
        check_password(_DUMMY_HASH, password)
        return None
    if not user.active or not check_password(user.password_hash, password):
        return None
    return user


_DUMMY_HASH = _hasher.hash("timing-equaliser-not-a-password")


def scope_clause(p: Principal, entity: Any) -> ColumnElement[bool]:
    """SQL condition restricting rows of ``entity`` to what ``p`` may see.

    ``entity`` is any mapped class with ``city_code``, ``county_code``, ``township_code`` and
    ``body_code`` columns (leads, monitoring points): one rule for every kind of row.
    """
    if p.citywide:
        return true()
    parts: list[ColumnElement[bool]] = []
    if p.scope_codes:
        codes = sorted(p.scope_codes)
        parts.append(
            or_(
                entity.city_code.in_(codes),
                entity.county_code.in_(codes),
                entity.township_code.in_(codes),
            )
        )
    if p.scope_bodies:
        parts.append(entity.body_code.in_(sorted(p.scope_bodies)))
    return and_(*parts) if parts else false()


def lead_scope_clause(p: Principal) -> ColumnElement[bool]:
    """SQL condition restricting :class:`Lead` rows to what ``p`` may see."""
    return scope_clause(p, Lead)
