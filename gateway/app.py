"""`create_app(settings)`: the Starlette app with its routes, middleware and lifespan.

The lifespan owns every resource (the store and its pool, the upstream's pooled HTTP client, the
JWKS client): opened when the app starts, closed when it stops, never at import time.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta

from sqlalchemy import Table
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway import __version__, audit, bootstrap, rate_limits, rest
from gateway.api.context import Context
from gateway.api.schema import build_schema
from gateway.api.view import HardenedGraphQLView
from gateway.audit import AuditTrail
from gateway.auth import AuthenticationMiddleware, open_authenticator
from gateway.callers import caller_of
from gateway.domain import Backend, utc_now
from gateway.engine import tables
from gateway.engine.codes import KdfPool
from gateway.engine.engine import CredentialEngine
from gateway.hardening import BodySizeLimitMiddleware
from gateway.rate_limits import RateLimiter
from gateway.service import Policy, RegenerationService
from gateway.settings import Settings
from gateway.store import Store
from gateway.upstream import UpstreamClient, upstream_http_client

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RequestIdMiddleware:
    """Give every HTTP request an id: the caller's `X-Request-ID` when well-formed, else a new one.

    The id is in `request.state.request_id`, in every log line about the request, and in the
    response's `X-Request-ID` header.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((value for name, value in scope["headers"] if name == b"x-request-id"), b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class GraphQLView(HardenedGraphQLView):
    """Strawberry's ASGI view (with the HTTP rules of `gateway.api.view`), with our typed context
    built from the app's state."""

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        return Context(
            service=request.app.state.service,
            caller=caller_of(request),
            settings=request.app.state.settings,
        )


async def healthz(request: Request) -> JSONResponse:
    """Liveness: the process answers. Reports the version and the backend."""
    backend: Backend = request.app.state.backend
    return JSONResponse({"status": "ok", "version": __version__, "backend": backend.name})


async def readyz(request: Request) -> JSONResponse:
    """Readiness: can this instance serve a regeneration now? 200 when it can, 503 when it cannot.

    Upstream mode reports the circuit breaker (not ready while it is open) and the call queue;
    the local engine reports whether its store answers.
    """
    backend: Backend = request.app.state.backend
    report: dict[str, object] = {"backend": backend.name}
    if isinstance(backend, UpstreamClient):
        report.update(backend.readiness())
    elif isinstance(backend, CredentialEngine):
        reachable = await backend.store.ping()
        report.update(ready=reachable, store="reachable" if reachable else "unreachable")
    ready = report.pop("ready", True)
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", **report},
        status_code=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )


async def open_backend(settings: Settings, store: Store, resources: AsyncExitStack) -> Backend:
    """The backend the settings choose. What it opens (the upstream's HTTP client) goes on
    `resources`, which the lifespan closes."""
    if settings.backend == "upstream":
        http = await resources.enter_async_context(upstream_http_client(settings))
        return UpstreamClient.from_settings(settings, http)
    return CredentialEngine(
        store,
        otp_ttl=timedelta(seconds=settings.otp_ttl_seconds),
        kdf_cost=settings.kdf_cost,
        lockout_after=settings.bootstrap_lockout_attempts,
        kdf=KdfPool(settings.kdf_workers),
    )


def store_tables(settings: Settings) -> tuple[Table, ...]:
    """The tables the settings need: the audit trail's and the rate limiter's always, the local
    engine's only when it serves."""
    engine_tables = tables.TABLES if settings.backend == "local" else ()
    return (*audit.TABLES, *rate_limits.TABLES, *engine_tables)


def create_app(settings: Settings, *, backend: Backend | None = None) -> Starlette:
    """The gateway as an ASGI app. `backend` overrides the one the settings choose (for tests)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.settings = settings
        async with AsyncExitStack() as resources:
            app.state.authenticator = await open_authenticator(settings, resources)
            # The store serves every backend: the engine's registry, and the audit trail and rate limits.
            store = await Store.open(settings.store_url, schema=settings.database_schema, tables=store_tables(settings))
            resources.push_async_callback(store.close)
            app.state.audit = AuditTrail(store)
            chosen = backend if backend is not None else await open_backend(settings, store, resources)
            app.state.backend = chosen
            app.state.engine = chosen if isinstance(chosen, CredentialEngine) else None
            app.state.service = RegenerationService(
                chosen, app.state.audit, RateLimiter(store, utc_now), Policy.from_settings(settings)
            )
            yield

    graphql = GraphQLView(build_schema(settings), settings=settings)
    routes = [
        Route("/graphql", graphql, methods=["GET", "POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *rest.routes,
        *bootstrap.routes,
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    # Outermost last: request id, then the body-size limit, then bearer authentication.
    app.add_middleware(AuthenticationMiddleware, enabled=not settings.insecure_disable_auth)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app


def configure_logging(settings: Settings) -> None:
    """GATEWAY_LOG_LEVEL sets the gateway's own loggers; libraries log from INFO up (aiosqlite's DEBUG
    lines, one per database call, would drown everything else)."""
    level = logging.getLevelName(settings.log_level.upper())
    logging.basicConfig(level=max(level, logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("gateway").setLevel(level)


def app_from_env() -> Starlette:
    """Factory for `uvicorn --factory` and `gateway serve --workers N`: settings from the environment."""
    settings = Settings.from_env()
    configure_logging(settings)  # again: worker processes start with nothing configured
    return create_app(settings)
