"""Make the OpenAPI schema say what the app really answers.

FastAPI documents its own validation error shape (``detail`` as a list) while
:mod:`api.errors` answers ``{"detail": "...", "errors": [...]}``; and it documents none of the
domain errors (401, 403, 404, 409), the body limit (413) or the rate limit (429). This
post-processing fixes both, once, when the schema is first built.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {"type": "string", "description": "what is wrong, naming the field and the allowed values"},
        "field": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}, "input": {}},
            },
        },
    },
}

_DESCRIPTIONS = {
    "401": "missing, expired or forged bearer token",
    "403": "your role does not allow this",
    "404": "no such object, or it is outside your scope",
    "409": "conflicts with stored data",
    "413": "request body over the size limit",
    "422": "invalid input: the message names the field, the value and what is allowed",
    "429": "rate limit exceeded; see Retry-After",
}


def _error(code: str) -> dict[str, Any]:
    return {"description": _DESCRIPTIONS[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def complete_openapi(app: FastAPI) -> None:
    """Replace ``app.openapi`` with a version documenting every error response."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                             description=app.description, routes=app.routes)
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        comps["Error"] = ERROR_SCHEMA
        comps.pop("HTTPValidationError", None)
        comps.pop("ValidationError", None)
        for path, item in schema.get("paths", {}).items():
            for method, op in item.items():
                if not isinstance(op, dict) or "responses" not in op:
                    continue
                responses = op["responses"]
                codes = ["404", "422"]
                if op.get("security"):
                    codes += ["401", "403"]
                if method in ("post", "put", "patch", "delete"):
                    codes += ["409", "413"]
                if path.startswith("/public"):
                    codes.append("429")
                for code in codes:
                    existing = responses.get(code)
                    if existing is None or "HTTPValidationError" in str(existing):
                        responses[code] = _error(code)
        app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]
