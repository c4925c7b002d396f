"""ASGI middlewares that run before any route: the request id, the header and body-size limits.

- `RequestIdMiddleware`: every HTTP request gets an id (the caller's `X-Request-ID` when
  well-formed, else a new one), in `request.state.request_id`, the response's `X-Request-ID` and
  every log record (`gateway.logs.current`); one access line a request (`gateway.access`).
- `UnexpectedErrorMiddleware`: an unexpected exception becomes a JSON 500 that carries the id. It
  runs inside CORS (and the request id outside it), so the 500 carries the CORS headers too.
- `HeaderSizeLimitMiddleware`: headers over `GATEWAY_MAX_HEADER_BYTES` get 431.
- `BodySizeLimitMiddleware`: every route; a body over `GATEWAY_MAX_BODY_BYTES` gets 413, whether
  it announces its length or streams.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import logs

log = logging.getLogger(__name__)
access_log = logging.getLogger(logs.ACCESS_LOGGER)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RequestIdMiddleware:
    """Give every HTTP request an id: the caller's `X-Request-ID` when well-formed, else a new one.

    The id is in `request.state.request_id`, in every log line about the request, and in the
    response's `X-Request-ID` header, a 500 included. `UnexpectedErrorMiddleware`, further in, answers
    an unexpected exception; one that still reaches this middleware (raised outside it) gets the same
    JSON 500 here (Starlette's own error handler, outside this middleware, would answer without the id).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((value for name, value in scope["headers"] if name == b"x-request-id"), b"").decode("latin-1")
        # Not a secret (a caller may choose its own): `random`, which never leaves the GIL to
        # another thread mid-request as `os.urandom`'s system call can.
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else f"{random.getrandbits(128):032x}"
        scope.setdefault("state", {})["request_id"] = request_id
        entry = logs.RequestLog(request_id)
        token = logs.current.set(entry)
        began = time.perf_counter()
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unexpected error (request %s)", request_id)
            if started:
                raise  # too late for a 500: the server closes the connection
            await _internal_error(request_id)(scope, receive, send)
        finally:
            _log_access(scope, entry, status, time.perf_counter() - began)
            logs.current.reset(token)


def _internal_error(request_id: str) -> JSONResponse:
    body = {"error": "internal_error", "error_description": f"Unexpected error (request {request_id})"}
    return JSONResponse(body, 500, {"X-Request-ID": request_id})


class UnexpectedErrorMiddleware:
    """An exception that escapes the routes, logged with the request id and answered with a JSON 500
    naming it. Apart from `RequestIdMiddleware` so that CORS can sit between them: the request id
    (and its access line) covers a preflight, and CORS covers this 500, so a page can read it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_started(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_started)
        except Exception:
            if started:
                raise  # too late for a 500: the request id's middleware logs it, the server closes
            request_id = scope.get("state", {}).get("request_id", "")
            log.exception("unexpected error (request %s)", request_id)
            await _internal_error(request_id)(scope, receive, send)


def logged_path(scope: Scope) -> str:
    """The path an access line shows: the route's template, never the request's own path, whose
    segments may be study, subject or device ids (the REST face's are); a path no route matched (a
    404, or the redirect of a trailing slash) shows its first segment only. Never the query string,
    which may carry an mSubjectId."""
    route = getattr(scope.get("route"), "path", None)
    if route:
        return str(route)
    first, _, rest = str(scope.get("path", "")).lstrip("/").partition("/")
    return f"/{first}/…" if rest else f"/{first}"


def _log_access(scope: Scope, entry: logs.RequestLog, status: int, seconds: float) -> None:
    """The request's access line: its path as `logged_path` shows it, status, duration, outcome,
    caller and upstream status."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    route = logged_path(scope)
    user = scope.get("user")
    principal = getattr(user, "principal", None)
    fields = {
        "request_id": entry.request_id,  # as the filter adds it: here too for handlers without the filter
        "method": scope.get("method", ""),
        "path": route,
        "status": status,
        "duration_ms": round(seconds * 1000, 1),
        "outcome": entry.outcome or str(status),
        "sub": getattr(principal, "subject", None),
        "upstream_status": entry.upstream_status,
    }
    access_log.info(
        "%s %s %s %s %.1f ms", fields["method"], route, status, fields["outcome"], fields["duration_ms"], extra=fields
    )


class HeaderSizeLimitMiddleware:
    """Answer 431 to a request whose header lines add up to more than `max_bytes`, before any
    work of the gateway's (no authentication, no route). The HTTP server has read them by then:
    uvicorn bounds them for h11 (`h11_max_incomplete_event_size`, which `gateway serve` sets to
    the same bound), not for httptools."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and sum(len(n) + len(v) + 4 for n, v in scope["headers"]) > self.max_bytes:
            body = {
                "error": "headers_too_large",
                "error_description": f"request headers are limited to {self.max_bytes} bytes",
            }
            await JSONResponse(body, 431)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    """Raised from `receive` when a body grows past the limit."""


async def _too_large(send: Send, max_bytes: int) -> None:
    payload = json.dumps(
        {"error": "payload_too_large", "error_description": f"request bodies are limited to {max_bytes} bytes"}
    ).encode("utf-8")
    # No `Connection: close`: closing with the rest of the body unread makes the client's TCP stack
    # see a reset, often before it reads the 413; uvicorn reads and drops the rest instead.
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode("ascii"))]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class BodySizeLimitMiddleware:
    """Answer 413 to a body larger than `max_bytes`: at once when Content-Length says so, else as
    soon as the bytes received pass the limit (the route reading the body never sees the rest)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > self.max_bytes):
            await _too_large(send, self.max_bytes)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            if started:
                log.warning("a request body passed the limit after the response had started")
                return
            await _too_large(send, self.max_bytes)
