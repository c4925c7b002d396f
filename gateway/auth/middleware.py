"""Bearer authentication in front of the routes, on Starlette's own `AuthenticationMiddleware`.

`app.py` installs `AuthenticationMiddleware(backend=BearerTokenBackend(...), on_error=refuse)`:

- `BearerTokenBackend` checks the Authorization header with the `Authenticator` the lifespan put in
  the app's state (`gateway.state.AppState`) and answers `(AuthCredentials(["authenticated"]),
  PrincipalUser(principal))`, so the principal is on `request.user` (`principal_of` reads it). Every
  path is protected except the few in `PUBLIC_PATHS`, GraphiQL's files and page; with `enabled=False`
  (GATEWAY_INSECURE_DISABLE_AUTH) nothing is checked. Either way `request.user` is then Starlette's
  `UnauthenticatedUser`, and there is no principal.
- `refuse` turns an `AuthenticationError` into the answer: 401 with `WWW-Authenticate: Bearer`
  (503 with `Retry-After` when the JWKS cannot be fetched) and a JSON body in OAuth's words,
  before any route runs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection

from starlette import authentication
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.datastructures import Headers, QueryParams
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import Scope

from gateway.auth.errors import AuthenticationError, InvalidToken, KeysUnavailable, MissingToken
from gateway.domain import Principal
from gateway.state import state_of

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/api/deviceBootstrap"})
"""Paths that need no bearer token (the device bootstrap has its own Basic auth; `/metrics` shows no
identifiers, and is off with `GATEWAY_METRICS=false`)."""

PUBLIC_PREFIXES = ("/graphiql/",)
"""Paths under which reading needs no token: GraphiQL's own JavaScript and CSS (`gateway.api.graphiql`),
as public as the page that loads them."""

KEYS_RETRY_AFTER_SECONDS = 10
"""What a 503 for unfetchable keys tells the caller to wait (the JWKS is retried after as long)."""


def is_public(scope: Scope, public_paths: Collection[str] = PUBLIC_PATHS) -> bool:
    """Everything needs a token except the public paths, GraphiQL's files and the GraphiQL page.

    The page is exactly what the GraphQL view renders instead of executing: a GET with neither a
    `query` nor an `extensions` parameter that accepts text/html or */* (anything else, a persisted
    query by its hash included, is an execution and needs a token).
    """
    path: str = scope["path"]
    if path in public_paths:
        return True
    if path.startswith(PUBLIC_PREFIXES):  # every path below is the static files' (their mount's), read only
        return scope.get("method") in {"GET", "HEAD"}
    if path == "/graphql" and scope.get("method") == "GET":
        accept = Headers(scope=scope).get("accept", "")
        wants_page = "text/html" in accept or "*/*" in accept
        params = QueryParams(scope.get("query_string", b""))
        return wants_page and "query" not in params and "extensions" not in params
    return False


class PrincipalUser(BaseUser):
    """`request.user` for a verified bearer token: the `Principal` its claims name."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.principal.subject

    @property
    def identity(self) -> str:
        return self.principal.subject


def principal_of(connection: HTTPConnection) -> Principal | None:
    """The principal on `request.user`; None on a public path or with authentication off."""
    user = connection.user
    return user.principal if isinstance(user, PrincipalUser) else None


class BearerTokenBackend(AuthenticationBackend):
    """Starlette's authentication backend for the gateway's bearer tokens."""

    def __init__(self, *, enabled: bool = True, public_paths: Collection[str] = PUBLIC_PATHS) -> None:
        self.enabled = enabled
        self.public_paths = frozenset(public_paths)

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        if not self.enabled or is_public(conn.scope, self.public_paths):
            return None
        authenticator = state_of(conn)["authenticator"]
        if authenticator is None:  # fail closed: only `enabled=False` lets a request through unchecked
            raise RuntimeError("authentication is on but the lifespan opened no authenticator")
        principal = await authenticator.authenticate(conn.headers.get("authorization"))
        return AuthCredentials(["authenticated"]), PrincipalUser(principal)


def _challenge(error: AuthenticationError) -> str:
    if isinstance(error, MissingToken):
        return 'Bearer realm="gateway"'
    description = error.description.replace('"', "'")
    return f'Bearer realm="gateway", error="invalid_token", error_description="{description}"'


def refuse(conn: HTTPConnection, error: authentication.AuthenticationError) -> Response:
    """The middleware's `on_error`: the answer to a request that is not authenticated (never cached)."""
    if not isinstance(error, AuthenticationError):  # only ours are raised; anything else is a bad token
        error = InvalidToken("the token is not accepted")
    request_id = conn.scope.get("state", {}).get("request_id", "-")
    log.info("request %s not authenticated: %s", request_id, error.description)
    headers = {"Cache-Control": "no-store"}
    if isinstance(error, KeysUnavailable):
        body = {"error": "temporarily_unavailable", "error_description": error.description}
        headers["Retry-After"] = str(KEYS_RETRY_AFTER_SECONDS)
    else:
        code = "unauthorized" if isinstance(error, MissingToken) else "invalid_token"
        body = {"error": code, "error_description": error.description}
        headers["WWW-Authenticate"] = _challenge(error)
    return Response(json.dumps(body), status_code=error.status_code, headers=headers, media_type="application/json")
