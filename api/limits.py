"""Request limits: body size, NUL characters, and a per-client token bucket.

The body limit is an ASGI middleware so an oversized body is refused before any of it is
parsed: a declared ``Content-Length`` over the limit gets 413 at once, and a chunked body is
counted as it arrives. NUL characters are refused at the edge because PostgreSQL text cannot
hold them (the database would answer with a server error deep inside a query); no legitimate
lead, filter or name contains one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a lead with a 4,000-character description is ~20 kB
# File uploads (multipart: boundary layers as zipped Shapefile or GeoPackage, holiday notices)
# are legitimately large; they get their own, higher limit.
MAX_UPLOAD_BYTES = 200 << 20
_TEXT_BODIES = ("application/json", "application/x-www-form-urlencoded")


async def _reply(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    """ASGI middleware: 413 over the size limit, 422 for NUL in the path, query or a text body.

    ``max_body`` applies to every body except ``multipart/form-data`` uploads (``max_upload``).
    """

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY_BYTES, max_upload: int = MAX_UPLOAD_BYTES) -> None:
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"")
        if b"\x00" in scope.get("path", "").encode() or b"\x00" in unquote_to_bytes(query):
            await _reply(send, 422, "NUL characters (%00) are not accepted in paths or query parameters")
            return
        headers = dict(scope.get("headers") or [])
        ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        limit = self.max_upload if ctype == "multipart/form-data" else self.max_body
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _reply(send, 413, f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes")
            return
        if scope.get("method") in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        if ctype == "multipart/form-data":
            await self.app(scope, _counting(receive, limit), send)
            return
        # Read the whole (bounded) body, then replay it to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _reply(send, 413, f"request body exceeds the limit of {limit} bytes")
                return
            chunks.append(chunk)
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        if ctype in _TEXT_BODIES and _has_nul(body, ctype):
            await _reply(send, 422, "NUL characters are not accepted in request bodies")
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class BodyTooLarge(Exception):
    """A streamed upload went over its limit."""


def _counting(receive: Receive, limit: int) -> Receive:
    # Uploads are streamed to the app, not buffered here; counting them as they pass is enough.
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        msg = await receive()
        seen += len(msg.get("body", b""))
        if seen > limit:
            raise BodyTooLarge(f"upload exceeds the limit of {limit} bytes")
        return msg

    return wrapped


def _has_nul(body: bytes, ctype: str) -> bool:
    if b"\x00" in body:
        return True
    if ctype == "application/json":
        return b"\\u0000" in body
    return b"%00" in body


class TokenBucket:
    """An in-process token bucket per key (client IP): ``rate`` tokens a second, ``burst`` at most.

    Per process, not shared between workers: good enough to stop one client hammering the
    public feed; a reverse proxy is the place for a global limit.
    """

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Take one token; 0.0 when granted, else the seconds until one is available."""
        with self._lock:
            now = self.clock()
            tokens, last = self._state.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._state[key] = (tokens - 1.0, now)
                if len(self._state) > 100_000:  # forget idle clients rather than grow forever
                    self._state = {k: v for k, v in self._state.items() if now - v[1] < 3600}
                return 0.0
            self._state[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


def install(app: FastAPI, max_body: int = MAX_BODY_BYTES, max_upload: int = MAX_UPLOAD_BYTES) -> None:
    """Add the request limits to ``app`` and document its error responses in the OpenAPI schema."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    from api.openapi_doc import complete_openapi

    async def too_large(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413)

    app.add_middleware(RequestLimits, max_body=max_body, max_upload=max_upload)
    app.add_exception_handler(BodyTooLarge, too_large)
    complete_openapi(app)
