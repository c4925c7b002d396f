"""The keys a token is checked against: a shared HMAC secret, or the identity provider's JWKS.

`JwksKeys` fetches the JWKS with an httpx client the lifespan owns: keys are cached, refetched
when they grow old and on an unknown `kid` at most once a minute. A refresh runs in the background,
with its own deadline and a cap on the document; a known key never waits for it. An unreachable
JWKS rejects, never skips, the check (`KeysUnavailable`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import anyio
import httpx
import jwt
from anyio.abc import TaskGroup

from gateway.auth.errors import InvalidToken, KeysUnavailable
from gateway.domain import UpstreamFailure
from gateway.upstream.bodies import ACCEPT_ENCODING, read_capped

log = logging.getLogger(__name__)

# Which algorithms fit which kind of key: a token's `alg` must fit the key it names.
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
MAX_JWKS_BYTES = 512 * 1024
"""Cap on a JWKS document, raw and inflated: a provider's few dozen keys fit many times over."""


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
    a failed fetch the next try waits `retry_after_failure`. Fetches run one at a time, each as a
    background task of this object's task group (`async with JwksKeys(...)`, so the lifespan
    cancels it at shutdown), within `timeout` seconds and `max_bytes` (raw and inflated).

    A token naming a known key is checked at once, even while the keys are old and a refresh is
    due or running (stale while revalidate): when a refresh fails the old keys keep working. A
    token naming an unknown `kid`, or any token before the first keys arrive, waits for the
    refresh in flight (bounded by its deadline); when no key for the `kid` is known and the JWKS
    cannot be fetched, the token is refused (`KeysUnavailable`): never let through.
    """

    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        *,
        max_age: float = 300.0,
        min_refetch: float = 60.0,
        retry_after_failure: float = 10.0,
        timeout: float = 5.0,
        max_bytes: int = MAX_JWKS_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.http = http
        self.max_age = max_age
        self.min_refetch = min_refetch
        self.retry_after_failure = retry_after_failure
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.clock = clock
        self._keys: dict[str, VerificationKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._failed = False
        self._refresh: anyio.Event | None = None
        """Set when the refresh in flight ends; None while none runs."""
        self._tasks: TaskGroup | None = None
        self.fetches = 0
        """How many fetches were attempted (for tests and metrics)."""

    async def __aenter__(self) -> JwksKeys:
        tasks = anyio.create_task_group()
        await tasks.__aenter__()
        self._tasks = tasks
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> bool | None:
        tasks, self._tasks = self._tasks, None
        assert tasks is not None, "JwksKeys was not entered"
        tasks.cancel_scope.cancel()  # a refresh still running is abandoned
        return await tasks.__aexit__(kind, error, traceback)

    async def settled(self) -> bool:
        """Wait for the refresh in flight, if any, to end; False if it still ran after `timeout` seconds.

        The refresh ends within its own deadline: this bound holds even if it somehow did not.
        """
        refresh = self._refresh
        if refresh is not None:
            with anyio.move_on_after(self.timeout):
                await refresh.wait()
            return refresh.is_set()
        return True

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
        now = self.clock()
        key = self._keys.get(kid)
        if key is not None:
            if not self._fresh(now) and self._fetch_due(now):
                self._start_refresh(now)
            return key  # never waits for the refresh
        if self._fetch_due(now):
            self._start_refresh(now)
        settled = await self.settled()
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self._failed or not settled:
            raise KeysUnavailable("the token's signing keys cannot be fetched now; try again shortly")
        raise InvalidToken("the token names an unknown key (kid)")

    def _start_refresh(self, now: float) -> None:
        """Start a refresh in the background, unless one runs already."""
        if self._refresh is not None:
            return
        if self._tasks is None:
            raise RuntimeError("JwksKeys refreshes in the background: use it inside `async with`")
        self._attempted_at = now
        self.fetches += 1
        self._refresh = anyio.Event()
        self._tasks.start_soon(self._run_refresh, self._refresh, now)

    async def _run_refresh(self, done: anyio.Event, started: float) -> None:
        try:
            with anyio.fail_after(self.timeout):
                keys = await self._download()
        except TimeoutError:
            self._failed = True
            log.warning("JWKS fetch from %s failed: no whole answer within %g s", self.url, self.timeout)
        except Exception as error:  # whatever it was: a failed refresh must not end the lifespan
            self._failed = True
            reason = error.reason if isinstance(error, UpstreamFailure) else type(error).__name__
            log.warning("JWKS fetch from %s failed: %s", self.url, reason)
        else:
            self._keys = keys
            self._fetched_at = started
            self._failed = False
            log.info("JWKS fetched from %s: %d signing keys", self.url, len(keys))
        finally:
            self._refresh = None
            done.set()

    async def _download(self) -> dict[str, VerificationKey]:
        headers = {"Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING}
        async with self.http.stream("GET", self.url, headers=headers) as response:
            response.raise_for_status()
            body = await read_capped(response, self.max_bytes)
        try:
            return parse_jwks(json.loads(body))
        except RecursionError:
            raise ValueError("a JWKS nested too deep") from None
