"""Domain errors. They carry no HTTP status: ``api.errors`` maps them in one table."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every error leadgrid reports to a user."""

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class NotFound(DomainError):
    """The object does not exist *or* is outside the caller's scope (never tell which)."""


class Conflict(DomainError):
    """The request contradicts stored state (duplicate, concurrent change, wrong state)."""


class Invalid(DomainError, ValueError):
    """Input that names a field, the bad value and what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        shown = repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        super().__init__(f"{field}: {shown} is not valid; {allowed}", field=field, value=shown)
        self.field = field


class Forbidden(DomainError):
    """The caller is known but their role does not allow the action."""


class Unauthorized(DomainError):
    """Missing, expired or forged credentials."""
