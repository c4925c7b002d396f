"""Who is calling: bearer JWTs turned into a `Principal`, checked in front of the protected routes.

- `Authenticator` verifies a token with PyJWT: the signature (against a JWKS's keys, chosen by
  `kid`, or against an HS256 secret), `alg` from a fixed allow-list matched to the key (never
  `none`, never the token's own choice), and `iss`, `aud`, `exp`, `sub` required, with a small
  leeway. The `rights` claim becomes `Principal.rights`; a claim of the wrong shape is a bad token.
- `JwksKeys` fetches the JWKS with the app's httpx client: keys are cached, refetched when they
  grow old and on an unknown `kid` at most once a minute. An unreachable JWKS rejects, never skips,
  the check.
- `AuthenticationMiddleware` puts the `Principal` on `scope["state"]["principal"]` (where
  `gateway.callers.caller_of` finds it) or answers 401 with `WWW-Authenticate: Bearer` before
  any route runs. Every path is protected except the few in `PUBLIC_PATHS` and the GraphiQL page.
- With no auth settings (and not in production) tokens are signed with a development secret kept
  in the data folder; `gateway token` signs with the same secret (`mint_token`).

A token or an Authorization header never reaches a log line, an error message or a repr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Collection, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.to_thread
import httpx
import jwt
from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.domain import DEVICE_ACTIONS_POST, InvalidInput, Principal, StudyMode, parse_guid
from gateway.settings import Settings

log = logging.getLogger(__name__)

DEV_SECRET_FILE = "auth-dev-secret"  # noqa: S105 - a file name, not a secret
"""The development HS256 secret's file in the data folder (mode 0600, made on first use)."""
MAX_TOKEN_LENGTH = 8192
_BEARER = re.compile(r"Bearer +([A-Za-z0-9._~+/-]+=*) *", re.IGNORECASE)

# Which algorithms fit which kind of key: a token's `alg` must fit the key it names.
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = _RSA_ALGORITHMS | frozenset(_EC_ALGORITHMS.values()) | {"EdDSA"}


# ---------------------------------------------------------------------------------------------
# Errors


class AuthenticationError(Exception):
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


# ---------------------------------------------------------------------------------------------
# Claims → Principal


def parse_rights(value: object) -> dict[str, dict[str, frozenset[str]]]:
    """The `rights` claim, `{"<STUDYID or *>": {"<mode or *>": ["DeviceActionsPost", ...]}}`, checked.

    Study ids are normalised like every GUID (upper case, no dashes), modes to lower case; a
    missing claim grants nothing. Raises `InvalidToken` when the claim has another shape.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidToken("the rights claim must be an object of studies")
    rights: dict[str, dict[str, frozenset[str]]] = {}
    for study, modes in value.items():
        try:
            study_key = study if study == "*" else parse_guid(study, "study")
        except InvalidInput:
            raise InvalidToken("the rights claim names a study that is not a GUID or *") from None
        if not isinstance(modes, dict):
            raise InvalidToken("the rights claim must map each study to an object of modes")
        for mode, names in modes.items():
            mode_key = mode.lower() if isinstance(mode, str) else ""
            if mode_key != "*" and mode_key not in {m.value for m in StudyMode}:
                raise InvalidToken("the rights claim names a mode other than active, test, training or *")
            if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
                raise InvalidToken("the rights claim must list each mode's rights as strings")
            granted = rights.setdefault(study_key, {})
            granted[mode_key] = granted.get(mode_key, frozenset()) | frozenset(names)
    return rights


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise InvalidToken("the sub claim must be a non-empty string")
    client_id = claims.get("client_id", claims.get("azp"))
    if client_id is not None and not isinstance(client_id, str):
        raise InvalidToken("the client_id claim must be a string")
    return Principal(subject=subject, client_id=client_id, rights=parse_rights(claims.get("rights")))


# ---------------------------------------------------------------------------------------------
# Keys


@dataclass(frozen=True)
class VerificationKey:
    """A key and the algorithms a token signed with it may name."""

    key: Any
    algorithms: frozenset[str]


class KeySource(Protocol):
    async def key_for(self, header: Mapping[str, Any]) -> VerificationKey:
        """The key the token's header names; raises `InvalidToken` or `KeysUnavailable`."""
        ...


class SecretKey:
    """A shared HMAC secret: every token is checked against it, whatever its `kid`."""

    def __init__(self, secret: bytes) -> None:
        self._key = VerificationKey(secret, HMAC_ALGORITHMS)

    def __repr__(self) -> str:
        return "SecretKey(<hidden>)"

    async def key_for(self, header: Mapping[str, Any]) -> VerificationKey:
        return self._key


def _jwk_algorithms(jwk: Mapping[str, Any]) -> frozenset[str]:
    """The algorithms a JWK may verify: by its key type (and curve), narrowed to its `alg` if it has one."""
    kty = jwk.get("kty")
    if kty == "RSA":
        fitting = _RSA_ALGORITHMS
    elif kty == "EC" and jwk.get("crv") in _EC_ALGORITHMS:
        fitting = frozenset({_EC_ALGORITHMS[jwk["crv"]]})
    elif kty == "OKP" and jwk.get("crv") == "Ed25519":
        fitting = frozenset({"EdDSA"})
    else:
        return frozenset()  # symmetric (`oct`) and unknown keys are never taken from a JWKS
    alg = jwk.get("alg")
    if alg is not None:
        return fitting & {alg}
    return fitting


def parse_jwks(document: object) -> dict[str, VerificationKey]:
    """The usable signing keys of a JWKS document, by `kid`. Keys without a `kid`, for encryption
    (`use` other than `sig`), symmetric or malformed are left out."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS: expected an object with a keys list")
    keys: dict[str, VerificationKey] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or jwk.get("use", "sig") != "sig":
            continue
        algorithms = _jwk_algorithms(jwk)
        if not algorithms:
            continue
        try:
            key = jwt.PyJWK(jwk, algorithm=min(algorithms)).key
        except (jwt.PyJWKError, ValueError, TypeError):
            log.warning("JWKS: key %r is malformed; skipped", jwk["kid"][:64])
            continue
        keys[jwk["kid"]] = VerificationKey(key, algorithms)
    return keys


class JwksKeys:
    """The identity provider's signing keys, fetched from its JWKS URL and cached by `kid`.

    Keys are fetched on first use and again when older than `max_age`. An unknown `kid` triggers
    a refetch at most once per `min_refetch` (so random `kid`s cannot hammer the provider); after
    a failed fetch the next try waits `retry_after_failure`. Fetches run one at a time. When a
    refresh of old keys fails the old keys keep working; when no key for the `kid` is known and
    the JWKS cannot be fetched, the token is refused (`KeysUnavailable`): never let through.
    """

    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        *,
        max_age: float = 300.0,
        min_refetch: float = 60.0,
        retry_after_failure: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.http = http
        self.max_age = max_age
        self.min_refetch = min_refetch
        self.retry_after_failure = retry_after_failure
        self.clock = clock
        self._keys: dict[str, VerificationKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._failed = False
        self._lock = anyio.Lock()
        self.fetches = 0
        """How many fetches were attempted (for tests and metrics)."""

    def _fresh(self, now: float) -> bool:
        return self._fetched_at is not None and now - self._fetched_at < self.max_age

    def _fetch_due(self, now: float) -> bool:
        if self._attempted_at is None:
            return True
        wait = self.retry_after_failure if self._failed else self.min_refetch
        return now - self._attempted_at >= wait

    async def key_for(self, header: Mapping[str, Any]) -> VerificationKey:
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("the token names no key (kid)")
        if kid in self._keys and self._fresh(self.clock()):
            return self._keys[kid]
        async with self._lock:
            now = self.clock()
            known = kid in self._keys
            if (not known or not self._fresh(now)) and self._fetch_due(now):
                await self._fetch(now)
            if kid in self._keys:
                return self._keys[kid]
            if self._failed:
                raise KeysUnavailable("the token's signing keys cannot be fetched now; try again shortly")
            raise InvalidToken("the token names an unknown key (kid)")

    async def _fetch(self, now: float) -> None:
        self._attempted_at = now
        self.fetches += 1
        try:
            response = await self.http.get(self.url, headers={"Accept": "application/json"})
            response.raise_for_status()
            keys = parse_jwks(response.json())
        except (httpx.HTTPError, ValueError) as error:
            self._failed = True
            log.warning("JWKS fetch from %s failed: %s", self.url, type(error).__name__)
            return
        self._keys = keys
        self._fetched_at = now
        self._failed = False
        log.info("JWKS fetched from %s: %d signing keys", self.url, len(keys))


# ---------------------------------------------------------------------------------------------
# The authenticator


_CLAIM_ERRORS: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidIssuerError, "the token's issuer is not accepted"),
    (jwt.InvalidAudienceError, "the token is meant for another audience"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not accepted"),
)


class Authenticator:
    """Turns an Authorization header into a `Principal`, or raises `AuthenticationError`."""

    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str,
        audience: str,
        algorithms: Collection[str],
        leeway: float = 30,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.algorithms = frozenset(algorithms) - {"none"}
        self.leeway = leeway

    async def authenticate(self, authorization: str | None) -> Principal:
        if authorization is None or not authorization.strip():
            raise MissingToken("send Authorization: Bearer <token>")
        match = _BEARER.fullmatch(authorization.strip())
        if match is None:
            raise InvalidToken("the Authorization header must be: Bearer <token>")
        token = match.group(1)
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("the token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidToken("the token is malformed") from None
        alg = header.get("alg")
        # The allow-list decides, never the token: `none` and anything unlisted are refused here.
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken("the token's algorithm is not accepted")
        key = await self.keys.key_for(header)
        if alg not in key.algorithms:
            raise InvalidToken("the token's algorithm does not fit its key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.MissingRequiredClaimError as error:
            raise InvalidToken(f"the token has no {error.claim} claim") from None
        except jwt.InvalidTokenError as error:
            for kind, description in _CLAIM_ERRORS:
                if isinstance(error, kind):
                    raise InvalidToken(description) from None
            raise InvalidToken("the token is malformed") from None
        return principal_from_claims(claims)


# ---------------------------------------------------------------------------------------------
# Secrets and development tokens


def development_secret(data_dir: str | Path) -> bytes:
    """The development HS256 secret in `data_dir`, made (random, mode 0600) on first use.

    Made in a temporary file and linked into place, so that two processes starting at once end
    up with the same secret and nobody reads a half-written one.
    """
    folder = Path(data_dir)
    path = folder / DEV_SECRET_FILE
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=".auth-dev-secret-")  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as file:
                file.write(secrets.token_urlsafe(48) + "\n")
            with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    if os.name == "posix" and path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users: chmod 600 it (anyone who reads it can sign tokens)", path)
    secret = path.read_text(encoding="ascii").strip()
    if len(secret) < 32:
        raise ValueError(f"{path} holds a secret shorter than 32 characters: delete it to make a new one")
    return secret.encode("ascii")


def signing_secret(settings: Settings) -> bytes | None:
    """The HS256 secret tokens are signed with: the configured one, else (no JWKS) the development one."""
    if settings.auth_hs256_secret:
        return settings.auth_hs256_secret.encode("utf-8")
    if settings.auth_jwks_url:
        return None
    return development_secret(settings.data_dir)


def uses_development_secret(settings: Settings) -> bool:
    """True for the embedded default: no JWKS, no configured secret, authentication on."""
    return not (settings.auth_jwks_url or settings.auth_hs256_secret or settings.insecure_disable_auth)


def mint_token(
    secret: bytes,
    *,
    issuer: str,
    audience: str,
    subject: str = "developer",
    rights: Mapping[str, Mapping[str, Collection[str]]],
    ttl_seconds: int = 3600,
    client_id: str = "gateway-token",
    now: float | None = None,
) -> str:
    """An HS256 token with the claims the gateway checks: iss, aud, sub, iat, exp, client_id and rights."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "client_id": client_id,
        "iat": issued,
        "exp": issued + ttl_seconds,
        "rights": {study: {mode: sorted(names) for mode, names in modes.items()} for study, modes in rights.items()},
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def development_token(settings: Settings, *, study: str, mode: str, ttl_seconds: int, subject: str) -> str:
    """What `gateway token` prints: DeviceActionsPost for one study (or `*`) in one mode (or `*`)."""
    secret = signing_secret(settings)
    if secret is None:
        raise ValueError(
            "this gateway checks tokens against GATEWAY_AUTH_JWKS_URL: get a token from that identity provider"
        )
    try:
        study_key = study if study == "*" else parse_guid(study, "--study")
    except InvalidInput:
        raise ValueError("--study must be a 32-character hexadecimal GUID or *") from None
    mode_key = mode.lower()
    if mode_key != "*" and mode_key not in {m.value for m in StudyMode}:
        raise ValueError("--mode must be active, test, training or *")
    return mint_token(
        secret,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        subject=subject,
        rights={study_key: {mode_key: [DEVICE_ACTIONS_POST]}},
        ttl_seconds=ttl_seconds,
    )


def serve_hint(settings: Settings, command: str = "gateway") -> str:
    """The line `gateway serve` prints about authentication; `command` is how this gateway was run."""
    if settings.insecure_disable_auth:
        return "Auth: OFF (GATEWAY_INSECURE_DISABLE_AUTH=true): anyone who reaches this port can regenerate credentials"
    if settings.auth_jwks_url:
        return (
            f"Auth: bearer tokens from your identity provider (keys: {settings.auth_jwks_url}, "
            f"issuer {settings.auth_issuer}, audience {settings.auth_audience})"
        )
    return (
        f"Auth: every call needs a bearer token. Get one with: {command} token --study '*' --mode '*'  "
        'then paste {"Authorization": "Bearer <token>"} into GraphiQL\'s Headers pane (and re-fetch the schema)'
    )


async def open_authenticator(settings: Settings, resources: AsyncExitStack) -> Authenticator | None:
    """The authenticator the settings describe (None when authentication is switched off).

    With a JWKS its httpx client goes on `resources`, which the lifespan closes.
    """
    if settings.insecure_disable_auth:
        log.warning("AUTHENTICATION IS OFF (GATEWAY_INSECURE_DISABLE_AUTH=true): every caller is let in")
        return None
    keys: KeySource
    if settings.auth_jwks_url:
        http = await resources.enter_async_context(
            httpx.AsyncClient(timeout=settings.auth_jwks_timeout_seconds, follow_redirects=False)
        )
        keys = JwksKeys(settings.auth_jwks_url, http, max_age=settings.auth_jwks_cache_seconds)
    else:
        secret = await anyio.to_thread.run_sync(signing_secret, settings)
        assert secret is not None
        keys = SecretKey(secret)
    return Authenticator(
        keys,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        algorithms=settings.allowed_auth_algorithms,
        leeway=settings.auth_leeway_seconds,
    )


# ---------------------------------------------------------------------------------------------
# The middleware

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/api/deviceBootstrap"})
"""Paths that need no bearer token (the device bootstrap has its own Basic auth)."""


def is_public(scope: Scope, public_paths: Collection[str] = PUBLIC_PATHS) -> bool:
    """Everything needs a token except the public paths and the GraphiQL page.

    The page is exactly what Strawberry renders instead of executing: a GET with no `query`
    parameter that accepts text/html or */* (anything else, a persisted query by its hash
    included, is an execution and needs a token).
    """
    path: str = scope["path"]
    if path in public_paths:
        return True
    if path == "/graphql" and scope.get("method") == "GET":
        accept = Headers(scope=scope).get("accept", "")
        wants_page = "text/html" in accept or "*/*" in accept
        return wants_page and "query" not in QueryParams(scope.get("query_string", b""))
    return False


def _challenge(error: AuthenticationError) -> str:
    if isinstance(error, MissingToken):
        return 'Bearer realm="gateway"'
    description = error.description.replace('"', "'")
    return f'Bearer realm="gateway", error="invalid_token", error_description="{description}"'


async def _refuse(error: AuthenticationError, send: Send) -> None:
    if isinstance(error, KeysUnavailable):
        body = {"error": "temporarily_unavailable", "error_description": error.description}
        headers = [(b"retry-after", b"10")]
    else:
        code = "unauthorized" if isinstance(error, MissingToken) else "invalid_token"
        body = {"error": code, "error_description": error.description}
        headers = [(b"www-authenticate", _challenge(error).encode("latin-1"))]
    payload = json.dumps(body).encode("utf-8")
    headers += [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode("ascii")),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class AuthenticationMiddleware:
    """Bearer authentication in front of every route but the public ones.

    The authenticator is the one the lifespan put in the app's state (`gateway.state.AppState`). With
    `enabled=False` (GATEWAY_INSECURE_DISABLE_AUTH) requests pass with no principal.
    """

    def __init__(self, app: ASGIApp, *, enabled: bool = True, public_paths: Collection[str] = PUBLIC_PATHS) -> None:
        self.app = app
        self.enabled = enabled
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"} or not self.enabled or is_public(scope, self.public_paths):
            await self.app(scope, receive, send)
            return
        authenticator: Authenticator = scope["state"]["authenticator"]  # fails closed when missing
        try:
            principal = await authenticator.authenticate(Headers(scope=scope).get("authorization"))
        except AuthenticationError as error:
            request_id = scope.get("state", {}).get("request_id", "-")
            log.info("request %s not authenticated: %s", request_id, error.description)
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await _refuse(error, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
