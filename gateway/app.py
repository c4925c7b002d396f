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

from sqlalchemy import Table
from starlette.applications import Starlette
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount, Route

from gateway import audit, device, health, metrics, rate_limits, rest
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
from gateway.http import BodySizeLimitMiddleware, HeaderSizeLimitMiddleware, RequestIdMiddleware
from gateway.logs import configure, note_upstream_response
from gateway.rate_limits import RateLimiter
from gateway.regeneration import Policy, RegenerationService
from gateway.settings import Settings
from gateway.shutdown import ShutdownSignal
from gateway.state import AppState
from gateway.store import Store
from gateway.upstream import UpstreamClient, upstream_http_client

log = logging.getLogger(__name__)

CORS_METHODS = ["GET", "POST", "PUT"]
"""GraphQL (GET, POST) and the REST face (PUT)."""
CORS_HEADERS = ["Authorization", "Content-Type", "X-Request-ID"]
"""What a page may send: the token, JSON, and its own request id to follow a call in the logs."""


async def open_backend(settings: Settings, store: Store, resources: AsyncExitStack) -> Backend:
    """The backend the settings choose. What it opens (the upstream's HTTP client) goes on
    `resources`, which the lifespan closes."""
    if settings.backend == "upstream":
        http = await resources.enter_async_context(upstream_http_client(settings.upstream))
        http.event_hooks["response"] = [*http.event_hooks["response"], note_upstream_response]  # for the access line
        return UpstreamClient.from_settings(settings.upstream, http)
    return CredentialEngine(
        store,
        otp_ttl=timedelta(seconds=settings.otp_ttl_seconds),
        kdf_cost=settings.kdf_cost,
        lockout_after=settings.rate_limits.bootstrap_lockout_attempts,
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
    async def lifespan(app: Starlette) -> AsyncIterator[AppState]:
        async with AsyncExitStack() as resources:
            authenticator = await open_authenticator(settings.auth, settings.data_dir, resources)
            # The store serves every backend: the engine's registry, and the audit trail and rate limits.
            store = await Store.open(settings.store_url, schema=settings.database_schema, tables=store_tables(settings))
            resources.push_async_callback(store.close)
            trail = AuditTrail(store, audit_key(settings))
            chosen = backend if backend is not None else await open_backend(settings, store, resources)
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
        build_schema(settings.graphql, production=settings.production),
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
    # Outermost last: request id, then CORS (a preflight needs no token; a refusal below still carries
    # the CORS headers, so a page can read its status), the header and body-size limits, then bearer
    # authentication.
    bearer_tokens = BearerTokenBackend(enabled=not settings.auth.insecure_disable_auth)
    app.add_middleware(AuthenticationMiddleware, backend=bearer_tokens, on_error=refuse)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.http.max_body_bytes)
    app.add_middleware(HeaderSizeLimitMiddleware, max_bytes=settings.http.max_header_bytes)
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
    return app


def app_from_env() -> Starlette:
    """Factory for `uvicorn --factory` and `gateway serve --workers N`: settings from the environment."""
    settings = Settings.from_env()
    configure(settings)  # logging again: worker processes start with nothing configured
    return create_app(settings)
