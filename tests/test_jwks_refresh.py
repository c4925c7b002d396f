"""The JWKS refreshed in the background, over real HTTP on loopback (issue 9, item 8): a token
signed by a known key never waits for a refresh, however slowly the provider answers; a refresh
has its own deadline and a cap on the document, and the lifespan cancels one still running.
"""

from __future__ import annotations

import gzip
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.auth import Authenticator, JwksKeys, KeysUnavailable, open_authenticator
from gateway.auth.keys import MAX_JWKS_BYTES
from tests.security import AUDIENCE, ISSUER, claims, public_jwk, rsa_key, sign, sqlite_settings
from tests.utils import run_server

pytestmark = pytest.mark.anyio

PIECES = 20


@dataclass
class SlowJwks:
    """A JWKS endpoint that sends its document in `PIECES` pieces over `drip_seconds`, or `raw` instead."""

    keys: list[dict[str, Any]]
    drip_seconds: float = 0.0
    raw: tuple[bytes, dict[str, str]] | None = None
    hits: int = 0
    release: anyio.Event = field(default_factory=anyio.Event)
    """Set when the test ends, so that a drip stops and the server can stop promptly."""
    app: Starlette = field(init=False)

    def __post_init__(self) -> None:
        self.app = Starlette(routes=[Route("/jwks", self._jwks)])

    async def _jwks(self, request: Request) -> Response:
        self.hits += 1
        if self.raw is not None:
            return Response(self.raw[0], headers=self.raw[1])
        document = json.dumps({"keys": self.keys}).encode()
        if not self.drip_seconds:
            return Response(document, media_type="application/json")
        step = len(document) // PIECES + 1
        pause = self.drip_seconds / PIECES

        async def drip() -> AsyncIterator[bytes]:
            for start in range(0, len(document), step):
                with anyio.move_on_after(pause):
                    await self.release.wait()
                yield document[start : start + step]

        return StreamingResponse(drip(), media_type="application/json")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def serving(server: SlowJwks) -> AsyncIterator[str]:
    """`server` on loopback; its JWKS URL. A drip still running stops when the test ends."""
    async with run_server(server.app) as url:
        try:
            yield f"{url}/jwks"
        finally:
            server.release.set()


def bearer(kid: str) -> str:
    """A token signed by `kid`'s key, new each time (the authenticator does not check one token twice)."""
    return f"Bearer {sign(claims(jti=secrets.token_hex(8)), rsa_key(kid[-1]), kid=kid)}"


async def timed(authenticator: Authenticator, kid: str) -> float:
    """Seconds it took to authenticate a token signed by `kid`'s key (which must be accepted)."""
    started = time.perf_counter()
    principal = await authenticator.authenticate(bearer(kid))
    assert principal.subject
    return time.perf_counter() - started


@asynccontextmanager
async def grown_old(server: SlowJwks, *, deadline: float) -> AsyncIterator[tuple[JwksKeys, Authenticator, Clock]]:
    """Keys fetched once from `server` (key-a), then grown old: the next token makes a refresh due."""
    clock = Clock()
    async with (
        serving(server) as url,
        httpx.AsyncClient() as http,
        JwksKeys(url, http, max_age=300, timeout=deadline, clock=clock) as keys,
    ):
        authenticator = Authenticator(keys, issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256"])
        await timed(authenticator, "key-a")
        clock.now += 301
        yield keys, authenticator, clock


async def test_a_known_key_never_waits_for_a_dripping_refresh_and_a_new_key_follows_it() -> None:
    server = SlowJwks([public_jwk(rsa_key("a"), "key-a")])
    async with grown_old(server, deadline=10) as (keys, authenticator, clock):
        # The provider has rotated in key-b and now takes 2 s to send the document.
        server.keys.append(public_jwk(rsa_key("b"), "key-b"))
        server.drip_seconds = 2.0
        known = [await timed(authenticator, "key-a") for _ in range(5)]
        assert max(known) < 0.5, f"a known key waited {max(known):.2f} s during a 2 s refresh"
        assert keys.fetches == 2  # the refresh started, in the background
        # key-b is not known yet: its token waits for the refresh in flight, then verifies.
        new = await timed(authenticator, "key-b")
        assert new < 5
        assert server.hits == 2
        clock.now += 100  # fresh again: neither key asks for another fetch
        await timed(authenticator, "key-a")
        await timed(authenticator, "key-b")
        assert server.hits == 2


async def test_a_refresh_past_its_deadline_fails_alone_and_the_known_keys_keep_working() -> None:
    server = SlowJwks([public_jwk(rsa_key("a"), "key-a")])
    async with grown_old(server, deadline=0.5) as (_, authenticator, _):
        server.drip_seconds = 30.0
        assert await timed(authenticator, "key-a") < 0.5
        started = time.perf_counter()
        with pytest.raises(KeysUnavailable):  # an unknown kid waits for the refresh: at most its deadline
            await authenticator.authenticate(bearer("key-b"))
        assert time.perf_counter() - started < 3
        assert await timed(authenticator, "key-a") < 0.5  # the failed refresh took nothing away


async def test_the_first_fetch_past_its_deadline_is_503_within_the_bound() -> None:
    server = SlowJwks([public_jwk(rsa_key("a"), "key-a")], drip_seconds=30.0)
    async with (
        serving(server) as url,
        httpx.AsyncClient() as http,
        JwksKeys(url, http, timeout=0.5) as keys,
    ):
        authenticator = Authenticator(keys, issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256"])
        started = time.perf_counter()
        with pytest.raises(KeysUnavailable):
            await authenticator.authenticate(bearer("key-a"))
        assert time.perf_counter() - started < 3


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param((b" " * (MAX_JWKS_BYTES + 1), {"Content-Type": "application/json"}), id="oversized"),
        pytest.param(
            (
                gzip.compress(b" " * (8 * 1024 * 1024)),
                {"Content-Encoding": "gzip", "Content-Type": "application/json"},
            ),
            id="gzip-bomb",
        ),
    ],
)
async def test_an_oversized_jwks_is_refused(
    raw: tuple[bytes, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    assert len(raw[0]) < 2 * MAX_JWKS_BYTES
    server = SlowJwks([], raw=raw)
    async with (
        serving(server) as url,
        httpx.AsyncClient() as http,
        JwksKeys(url, http) as keys,
    ):
        with pytest.raises(KeysUnavailable):
            await keys.key_for({"kid": "key-a"})
    assert f"with a body over {MAX_JWKS_BYTES} bytes" in caplog.text


async def test_the_lifespan_cancels_a_refresh_still_running(tmp_path: Path) -> None:
    server = SlowJwks([public_jwk(rsa_key("a"), "key-a")], drip_seconds=30.0)
    async with serving(server) as url:
        settings = sqlite_settings(
            tmp_path, auth_hs256_secret="", auth_jwks_url=url, auth_issuer=ISSUER, auth_audience=AUDIENCE
        )
        async with AsyncExitStack() as resources:
            authenticator = await open_authenticator(settings.auth, settings.data_dir, resources)
            assert authenticator is not None
            with anyio.move_on_after(0.3):  # the caller gives up; the fetch goes on in the background
                await authenticator.authenticate(bearer("key-a"))
            assert server.hits == 1
            started = time.perf_counter()
        assert time.perf_counter() - started < 2, "shutdown waited for the refresh"
