"""Who is calling: inbound bearer JWTs turned into a `Principal`, checked in front of the protected routes.

- `errors`:      why a request is not authenticated (the exception tree, drawn in its docstring).
- `tokens`:      an Authorization header verified (`Authenticator`) and its claims made a `Principal`.
- `keys`:        what a token is checked against: an HMAC secret, or the JWKS, cached.
- `development`: the development secret in the data folder and the tokens it signs (`gateway token`).
- `middleware`:  the backend and error answer for Starlette's `AuthenticationMiddleware`; the
                 principal is reached through `request.user` (`principal_of`).

A token or an Authorization header never reaches a log line, an error message or a repr.
"""

from gateway.auth.development import (
    DEV_SECRET_FILE,
    development_secret,
    development_token,
    mint_token,
    serve_hint,
    signing_secret,
)
from gateway.auth.errors import AuthenticationError, InvalidToken, KeysUnavailable, MissingToken
from gateway.auth.keys import JwksKeys, KeySource, SecretKey, VerificationKey, parse_jwks
from gateway.auth.middleware import PUBLIC_PATHS, BearerTokenBackend, PrincipalUser, is_public, principal_of, refuse
from gateway.auth.tokens import Authenticator, open_authenticator, parse_rights, principal_from_claims

__all__ = [
    "DEV_SECRET_FILE",
    "PUBLIC_PATHS",
    "AuthenticationError",
    "Authenticator",
    "BearerTokenBackend",
    "InvalidToken",
    "JwksKeys",
    "KeySource",
    "KeysUnavailable",
    "MissingToken",
    "PrincipalUser",
    "SecretKey",
    "VerificationKey",
    "development_secret",
    "development_token",
    "is_public",
    "mint_token",
    "open_authenticator",
    "parse_jwks",
    "parse_rights",
    "principal_from_claims",
    "principal_of",
    "refuse",
    "serve_hint",
    "signing_secret",
]
