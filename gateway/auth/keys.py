"""The keys a token is checked against: a shared HMAC secret, or the identity provider's JWKS.

`JwksKeys` fetches the JWKS with an httpx client the lifespan owns: keys are cached, refetched
when they grow old and on an unknown `kid` at most once a minute. An unreachable JWKS rejects,
never skips, the check (`KeysUnavailable`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import httpx
import jwt

from gateway.auth.errors import InvalidToken, KeysUnavailable

log = logging.getLogger(__name__)

# Which algorithms fit which kind of key: a token's `alg` must fit the key it names.
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})


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
