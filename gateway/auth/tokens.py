"""Bearer tokens: an Authorization header verified with PyJWT and its claims turned into a `Principal`.

`Authenticator` checks the signature (against a JWKS's keys, chosen by `kid`, or against an HS256
secret), `alg` from a fixed allow-list matched to the key (never `none`, never the token's own
choice), and `iss`, `aud`, `exp`, `sub` required, with a small leeway. The `rights` claim becomes
`Principal.rights`; a claim of the wrong shape is a bad token. `open_authenticator` builds the one
the settings describe. A token never reaches a log line, an error message or a repr.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from contextlib import AsyncExitStack
from typing import Any

import anyio.to_thread
import httpx
import jwt

from gateway.auth.development import signing_secret
from gateway.auth.errors import InvalidToken, MissingToken
from gateway.auth.keys import JwksKeys, KeySource, SecretKey
from gateway.domain import InvalidInput, Principal, parse_mode_grant, parse_study_grant
from gateway.settings import AuthSettings

log = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 8192
VERIFIED_FOR = 60.0
"""Longest a verified token is taken from the cache without checking its signature again."""
VERIFIED_TOKENS = 4096
"""Verified tokens remembered (least recently used dropped first)."""
_BEARER = re.compile(r"Bearer +([A-Za-z0-9._~+/-]+=*) *", re.IGNORECASE)


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
            study_key = parse_study_grant(study, "study")
        except InvalidInput:
            raise InvalidToken("the rights claim names a study that is not a GUID or *") from None
        if not isinstance(modes, dict):
            raise InvalidToken("the rights claim must map each study to an object of modes")
        for mode, names in modes.items():
            try:
                mode_key = parse_mode_grant(mode if isinstance(mode, str) else "", "mode")
            except InvalidInput:
                raise InvalidToken("the rights claim names a mode other than active, test, training or *") from None
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
        max_lifetime: float = 24 * 60 * 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.algorithms = frozenset(algorithms) - {"none"}
        self.leeway = leeway
        self.max_lifetime = max_lifetime
        self.clock = clock
        self._verified: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    async def authenticate(self, authorization: str | None) -> Principal:
        if authorization is None or not authorization.strip():
            raise MissingToken("send Authorization: Bearer <token>")
        match = _BEARER.fullmatch(authorization.strip())
        if match is None:
            raise InvalidToken("the Authorization header must be: Bearer <token>")
        token = match.group(1)
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("the token is too long")
        # A token verified moments ago is not verified again: the signature check was most of the
        # cost of authentication. Keyed by a digest (the token itself is not kept), until the
        # token expires and at most VERIFIED_FOR seconds, so a key withdrawn from the JWKS stops
        # working within that time.
        digest = hashlib.sha256(token.encode()).digest()
        now = self.clock()
        cached = self._verified.get(digest)
        if cached is not None and now < cached[1]:
            self._verified.move_to_end(digest)
            return cached[0]
        principal, expires = await self._verify(token, now)
        self._verified[digest] = (principal, min(expires, now + VERIFIED_FOR))
        if len(self._verified) > VERIFIED_TOKENS:
            self._verified.popitem(last=False)
        return principal

    async def _verify(self, token: str, now: float) -> tuple[Principal, float]:
        """Check the token whole; its principal and when it expires."""
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
        expires = self._lifetime(claims, now)
        return principal_from_claims(claims), expires

    def _lifetime(self, claims: Mapping[str, Any], now: float) -> float:
        """`exp` (and `iat`, `nbf` when present) as RFC 7519 NumericDates, never strings; a lifetime
        (`exp` - `iat`, or what is left of it) of at most `max_lifetime`. Returns `exp`."""
        for name in ("exp", "iat", "nbf"):
            value = claims.get(name)
            if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise InvalidToken(f"the {name} claim must be a number of seconds (an RFC 7519 NumericDate)")
        expires = float(claims["exp"])
        issued = float(claims.get("iat", now))
        if expires - min(issued, now) > self.max_lifetime + self.leeway:
            raise InvalidToken(f"the token lives longer than {self.max_lifetime:g} s")
        return expires


async def open_authenticator(settings: AuthSettings, data_dir: str, resources: AsyncExitStack) -> Authenticator | None:
    """The authenticator the settings describe (None when authentication is switched off).

    With a JWKS its httpx client and the task group of its background refreshes go on `resources`,
    which the lifespan closes; without one, the development secret is kept in `data_dir`.
    """
    if settings.insecure_disable_auth:
        log.warning("AUTHENTICATION IS OFF (GATEWAY_INSECURE_DISABLE_AUTH=true): every caller is let in")
        return None
    keys: KeySource
    if settings.jwks_url:
        http = await resources.enter_async_context(
            httpx.AsyncClient(timeout=settings.jwks_timeout_seconds, follow_redirects=False)
        )
        # Entered after its client, so closed before it: a refresh still running is cancelled first.
        keys = await resources.enter_async_context(
            JwksKeys(
                settings.jwks_url, http, max_age=settings.jwks_cache_seconds, timeout=settings.jwks_timeout_seconds
            )
        )
    else:
        secret = await anyio.to_thread.run_sync(signing_secret, settings, data_dir)
        assert secret is not None
        keys = SecretKey(secret)
    return Authenticator(
        keys,
        issuer=settings.issuer,
        audience=settings.audience,
        algorithms=settings.allowed_algorithms,
        leeway=settings.leeway_seconds,
        max_lifetime=settings.max_token_lifetime_seconds,
    )
