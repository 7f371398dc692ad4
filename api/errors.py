"""One table from domain exception to HTTP status, and field-level 422 messages."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from geo.crs import CoordinateError, DatumError
from layers.db import PoolTimeout
from layers.errors import Conflict, DomainError, Forbidden, Invalid, NotFound, Unauthorized

log = logging.getLogger("leadgrid")

STATUS: list[tuple[type[Exception], int]] = [
    (NotFound, 404),
    (Invalid, 422),
    (Conflict, 409),
    (Forbidden, 403),
    (Unauthorized, 401),
    (DomainError, 400),
]


def status_for(exc: Exception) -> int:
    """The HTTP status of a domain exception (first matching class in :data:`STATUS`)."""
    for cls, code in STATUS:
        if isinstance(exc, cls):
            return code
    return 500


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    async def domain(_: Request, exc: Exception) -> JSONResponse:
        code = status_for(exc)
        assert isinstance(exc, DomainError)
        body = {"detail": exc.message, **{k: v for k, v in exc.detail.items() if k != "value"}}
        headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
        return JSONResponse(body, status_code=code, headers=headers)

    async def validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for e in exc.errors():
            loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")]
            errors.append({"field": ".".join(loc) or "body", "message": e.get("msg", ""),
                           "input": _short(e.get("input"))})
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return JSONResponse({"detail": summary, "errors": errors}, status_code=422)

    async def coordinates(_: Request, exc: Exception) -> JSONResponse:
        # geo raises these for points that leave the valid range only after a datum conversion
        # (BD-09 near ±180°), past the edge's own range checks.
        return JSONResponse({"detail": str(exc)}, status_code=422)

    async def saturated(_: Request, exc: Exception) -> JSONResponse:
        # Every database connection of this worker stayed busy for the pool's whole timeout:
        # the service is over capacity, which a client should retry, not a server bug.
        log.warning("database connection pool exhausted: %s", exc)
        return JSONResponse({"detail": "the service is at capacity (all database connections busy); "
                                       "retry in a few seconds"}, status_code=503, headers={"Retry-After": "5"})

    for cls, _code in STATUS:
        app.add_exception_handler(cls, domain)
    app.add_exception_handler(PoolTimeout, saturated)
    app.add_exception_handler(CoordinateError, coordinates)
    app.add_exception_handler(DatumError, coordinates)
    app.add_exception_handler(RequestValidationError, validation)  # type: ignore[arg-type]


def _short(value: object) -> object:
    text = repr(value)
    if isinstance(value, float) and not math.isfinite(value):
        return text  # JSON has no NaN or Infinity: echoing them raw would turn a 422 into a 500
    return value if len(text) <= 120 and isinstance(value, str | int | float | None) else text[:117] + "..."
