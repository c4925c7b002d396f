"""Why a request is not authenticated. The middleware answers each with its status and JSON body:

starlette.authentication.AuthenticationError   (what Starlette's middleware catches)
└── AuthenticationError      401; `description` is safe to send back: it never holds the token
    ├── MissingToken         no Authorization header: a challenge without an error code
    ├── InvalidToken         a token was given but is malformed, forged, expired or misdirected
    └── KeysUnavailable      503: the JWKS cannot be fetched, so no token can be checked
"""

from __future__ import annotations

from starlette import authentication


class AuthenticationError(authentication.AuthenticationError):
    """The request is not authenticated. `description` is safe to send back: it never holds the token."""

    status_code = 401

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class MissingToken(AuthenticationError):
    """No Authorization header: the challenge carries no error code (RFC 6750 §3.1)."""


class InvalidToken(AuthenticationError):
    """A token was given but is malformed, forged, expired or meant for someone else."""


class KeysUnavailable(AuthenticationError):
    """The JWKS could not be fetched, so the token cannot be checked: refused, with 503."""

    status_code = 503
