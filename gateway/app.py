"""`create_app(settings)`: the Starlette app with its routes, middleware and lifespan.

The lifespan owns every resource (the store and its pool, later the upstream client): opened
when the app starts, closed when it stops, never at import time.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL

from gateway import __version__, rest
from gateway.api.context import Context
from gateway.api.schema import schema
from gateway.callers import caller_of
from gateway.domain import Backend
from gateway.engine.rules import CredentialEngine
from gateway.engine.store import Store
from gateway.settings import Settings, SettingsError

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


class GraphQLView(GraphQL[Context, None]):
    """Strawberry's ASGI view, with our typed context built from the app's state."""

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        return Context(
            backend=request.app.state.backend,
            caller=caller_of(request),
            settings=request.app.state.settings,
        )


async def healthz(request: Request) -> JSONResponse:
    """Liveness: the process answers. Reports the version and the backend."""
    backend: Backend = request.app.state.backend
    return JSONResponse({"status": "ok", "version": __version__, "backend": backend.name})


async def open_backend(settings: Settings) -> tuple[Backend, Store | None]:
    """The backend the settings choose, and the store it owns (if any)."""
    if settings.backend != "local":
        raise SettingsError("GATEWAY_BACKEND=upstream is not available in this version")
    store = await Store.open(settings.store_url, schema=settings.database_schema)
    engine = CredentialEngine(store, otp_ttl=timedelta(seconds=settings.otp_ttl_seconds), kdf_cost=settings.kdf_cost)
    return engine, store


def create_app(settings: Settings, *, backend: Backend | None = None) -> Starlette:
    """The gateway as an ASGI app. `backend` overrides the one the settings choose (for tests)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = None
        app.state.settings = settings
        if backend is not None:
            app.state.backend = backend
        else:
            app.state.backend, store = await open_backend(settings)
        try:
            yield
        finally:
            if store is not None:
                await store.close()

    graphql = GraphQLView(schema, graphql_ide="graphiql")
    routes = [
        Route("/graphql", graphql, methods=["GET", "POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        *rest.routes,
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(RequestIdMiddleware)
    return app


def app_from_env() -> Starlette:
    """Factory for `uvicorn --factory` and `gateway serve --workers N`: settings from the environment."""
    return create_app(Settings.from_env())
