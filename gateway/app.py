"""`create_app(settings)`: the Starlette app with its routes, middleware and lifespan.

The lifespan owns every resource (the store and its pools, the upstream's pooled HTTP client, the
JWKS client, the KDF's worker pool): opened when the app starts, closed when it stops, never at
import time. It yields them as the typed `AppState` that every request reads (`gateway.state`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

import anyio.to_thread
from sqlalchemy import Table
from starlette.applications import Starlette
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount, Route

from gateway import audit, device, health, metrics, rate_limits, rest, schema_versions
from gateway.api.graphiql import page as graphiql
from gateway.api.schema import build_schema
from gateway.api.view import GraphQLView
from gateway.audit import AuditTrail, audit_key
from gateway.auth import BearerTokenBackend, open_authenticator, refuse
from gateway.device import DeviceBootstrap
from gateway.domain import Backend, utc_now
from gateway.engine import tables
from gateway.engine.engine import CredentialEngine
from gateway.engine.otp import KdfPool
from gateway.http import (
    BodySizeLimitMiddleware,
    HeaderSizeLimitMiddleware,
    RequestIdMiddleware,
    UnexpectedErrorMiddleware,
)
from gateway.logs import configure, note_upstream_response
from gateway.rate_limits import RateLimiter
from gateway.regeneration import Policy, RegenerationService
from gateway.settings import Settings, SettingsError
from gateway.shutdown import ShutdownSignal
from gateway.state import AppState
from gateway.store import Store
from gateway.upstream import UpstreamClient, upstream_http_client

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from gateway.tracing import Tracing

log = logging.getLogger(__name__)

OTEL_MISSING = "GATEWAY_OTEL=true needs OpenTelemetry, which is not installed: pip install '.[otel]'"
CORS_METHODS = ["GET", "POST", "PUT"]
"""GraphQL (GET, POST) and the REST face (PUT)."""
CORS_HEADERS = ["Authorization", "Content-Type", "X-Request-ID"]
"""What a page may send: the token, JSON, and its own request id to follow a call in the logs."""


def open_tracing(settings: Settings, provider: TracerProvider | None = None) -> Tracing | None:
    """`GATEWAY_OTEL=true`: the gateway's tracing over `provider`, else one the `OTEL_*` variables
    configure. Off: None, and nothing of OpenTelemetry is imported. `SettingsError` (one line) when
    the extra is missing or `OTEL_TRACES_EXPORTER` names an exporter that is not installed."""
    if not settings.otel:
        return None
    try:
        from gateway.tracing import Tracing
    except ImportError:
        raise SettingsError(OTEL_MISSING) from None
    return Tracing(provider) if provider is not None else Tracing.from_env()


def check_tracing(settings: Settings) -> None:
    """What `open_tracing` would refuse, checked without building anything (`gateway serve`, before
    any worker starts)."""
    if not settings.otel:
        return
    try:
        from gateway.tracing import exporter_classes
    except ImportError:
        raise SettingsError(OTEL_MISSING) from None
    exporter_classes()


async def open_backend(
    settings: Settings, store: Store, resources: AsyncExitStack, tracing: Tracing | None = None
) -> Backend:
    """The backend the settings choose. What it opens (the upstream's HTTP client, the KDF's
    threads) goes on `resources`, which the lifespan closes."""
    if settings.backend == "upstream":
        http = await resources.enter_async_context(upstream_http_client(settings.upstream))
        http.event_hooks["response"] = [*http.event_hooks["response"], note_upstream_response]  # for the access line
        return UpstreamClient.from_settings(settings.upstream, http, tracing=tracing)
    kdf = KdfPool(settings.kdf_workers)
    resources.callback(kdf.close)
    engine = CredentialEngine(
        store,
        otp_ttl=timedelta(seconds=settings.otp_ttl_seconds),
        kdf_cost=settings.kdf_cost,
        lockout_after=settings.rate_limits.bootstrap_lockout_attempts,
        kdf=kdf,
        reserve=settings.otp_reserve,
    )
    resources.push_async_callback(engine.close)  # before the KDF's threads go: a refill may be on one
    return engine


def store_tables(settings: Settings) -> tuple[Table, ...]:
    """The tables the settings need: the audit trail's and the rate limiter's always, the local
    engine's only when it serves."""
    engine_tables = tables.TABLES if settings.backend == "local" else ()
    return (*audit.TABLES, *rate_limits.TABLES, *engine_tables)


def create_app(
    settings: Settings,
    *,
    backend: Backend | None = None,
    tracer_provider: TracerProvider | None = None,
    versioned: bool = False,
) -> Starlette:
    """The gateway as an ASGI app. `backend` overrides the one the settings choose, `tracer_provider`
    the one `OTEL_*` configures when `GATEWAY_OTEL=true` (both for tests). `versioned` (the factory
    `gateway serve` and uvicorn run): the store must be at the code's revision (the embedded SQLite
    default is migrated), else the start fails naming `gateway migrate`; without it the missing tables
    are created, as tests' stores are."""
    tracing = open_tracing(settings, tracer_provider)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[AppState]:
        async with AsyncExitStack() as resources:
            if tracing is not None:  # last out: the spans of everything closed before it are exported
                resources.push_async_callback(anyio.to_thread.run_sync, tracing.shutdown)
            authenticator = await open_authenticator(settings.auth, settings.data_dir, resources)
            # The store serves every backend: the engine's registry, and the audit trail and rate limits.
            url, schema = settings.store_url, settings.database_schema
            if versioned:  # the embedded default (no GATEWAY_DATABASE_URL) migrates itself
                needed = schema_versions.branches(settings.backend)
                await schema_versions.ensure(url, schema, needed, may_migrate=not settings.database_url)
            store = await Store.open(url, schema=schema, tables=store_tables(settings), create=not versioned)
            resources.push_async_callback(store.close)
            store.tracing = tracing
            trail = AuditTrail(store, audit_key(settings))
            chosen = backend if backend is not None else await open_backend(settings, store, resources, tracing)
            local = chosen if isinstance(chosen, CredentialEngine) else None
            shutdown = resources.enter_context(ShutdownSignal().watching())
            yield AppState(
                settings=settings,
                authenticator=authenticator,
                backend=chosen,
                device=DeviceBootstrap.from_settings(settings.rate_limits, local, trail) if local else None,
                service=RegenerationService(chosen, trail, RateLimiter(store, utc_now), policy),
                shutdown=shutdown,
            )

    policy = Policy.from_settings(settings.rate_limits, require_principal=not settings.auth.insecure_disable_auth)
    graphql = GraphQLView(
        build_schema(settings.graphql, production=settings.production, tracing=tracing),
        settings=settings.graphql,
        production=settings.production,
    )
    routes = [
        Route("/graphql", graphql, methods=["GET", "POST"]),
        *health.routes,
        *rest.routes,
        *device.routes,
        *(metrics.routes if settings.metrics else []),
        *([] if settings.production else [Mount(graphiql.ASSETS_PATH, graphiql.assets_app())]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    # Outermost last: the request id (a preflight too gets one and its access line), CORS (a preflight
    # needs no token; every answer below, the 500 of an unexpected error included, carries the CORS
    # headers, so a page can read its status and X-Request-ID), the unexpected error's 500, the header
    # and body-size limits, then bearer authentication. Tracing, when on, is outside them all.
    bearer_tokens = BearerTokenBackend(enabled=not settings.auth.insecure_disable_auth)
    app.add_middleware(AuthenticationMiddleware, backend=bearer_tokens, on_error=refuse)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.http.max_body_bytes)
    app.add_middleware(HeaderSizeLimitMiddleware, max_bytes=settings.http.max_header_bytes)
    app.add_middleware(UnexpectedErrorMiddleware)
    if settings.http.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.http.cors_origins,
            allow_methods=CORS_METHODS,
            allow_headers=CORS_HEADERS,
            expose_headers=["X-Request-ID"],
            max_age=600,
        )
    app.add_middleware(RequestIdMiddleware)
    if tracing is not None:  # outermost: the request's span covers the rest, continuing the caller's traceparent
        from gateway.tracing import RequestSpans

        app.add_middleware(RequestSpans, tracing=tracing, routes=routes)
    return app


def app_from_env() -> Starlette:
    """Factory for `uvicorn --factory` and `gateway serve --workers N`: settings from the environment."""
    settings = Settings.from_env()
    configure(settings)  # logging again: worker processes start with nothing configured
    return create_app(settings, versioned=True)
