"""The service account's token endpoint misbehaving, over real HTTP on loopback: an answer that
drips, one too large to read, a failure that `/readyz` reports (issue 9, item 7).

The tokens and the client secret are obviously fake test values.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.app import create_app
from gateway.domain import Caller, UpstreamFailure
from gateway.upstream import UpstreamClient
from gateway.upstream.credentials import MAX_TOKEN_BODY_BYTES, TOKEN_PROBE_SECONDS
from tests.security import sqlite_settings
from tests.test_upstream_auth import CLIENT_SECRET, REF, service_account
from tests.test_upstream_bodies import rss_bytes
from tests.upstream_servers import FAKE_OTP, Handler, ScriptedUpstream, Ticker, answer, serve_scripted, upstream_client
from tests.utils import run_server

pytestmark = pytest.mark.anyio

BIG = 50 * 1024 * 1024
GZIP_BOMB = gzip.compress(b" " * BIG, compresslevel=9)  # ~50 KB on the wire, under the raw cap; 50 MiB inflated


def dripping(upstream: ScriptedUpstream, arrived: anyio.Event) -> Handler:
    """A token endpoint that starts its answer, then sends one byte every 50 ms until the test ends."""

    async def handle(request: Request) -> Response:
        arrived.set()

        async def drip() -> AsyncIterator[bytes]:
            yield b'{"access_token": "test-token-drip", "token_type": "Bearer"'
            for _ in range(400):
                if upstream.release.is_set():
                    return
                await anyio.sleep(0.05)
                yield b" "

        return StreamingResponse(drip(), media_type="application/json")

    return handle


def streamed(size: int) -> Handler:
    """A 200 of `size` bytes, sent 1 MiB at a time (never whole in the server's memory either)."""
    chunk = b" " * (1024 * 1024)

    async def handle(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(size // len(chunk)):
                yield chunk

        return StreamingResponse(body(), media_type="application/json")

    return handle


def gzipped(body: bytes) -> Handler:
    async def handle(request: Request) -> Response:
        return Response(body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    return handle


async def failure_of(client: UpstreamClient, request_id: str = "req-token") -> UpstreamFailure:
    with pytest.raises(UpstreamFailure) as caught:
        await client.regenerate(REF, Caller(request_id=request_id))
    return caught.value


async def test_a_dripping_token_answer_ends_within_the_calls_deadline() -> None:
    upstream = ScriptedUpstream()
    upstream.token_handler = dripping(upstream, anyio.Event())
    async with (
        serve_scripted(upstream) as (_, url),
        upstream_client(url, upstream_total_timeout_seconds=0.5, **service_account(url)) as client,
    ):
        started = time.perf_counter()
        failure = await failure_of(client)
        elapsed = time.perf_counter() - started
    assert elapsed < 3, f"the call took {elapsed:.1f} s for a 0.5 s deadline"
    assert failure.reason == "no service token within the call's 0.5 s; nothing was sent"
    assert upstream.seen == []


async def test_callers_waiting_for_a_dripping_token_are_released_with_its_deadline() -> None:
    upstream = ScriptedUpstream()
    arrived = anyio.Event()
    upstream.token_handler = dripping(upstream, arrived)
    failures: dict[str, tuple[str, float]] = {}
    started = time.perf_counter()

    async def call(client: UpstreamClient, request_id: str) -> None:
        failure = await failure_of(client, request_id)
        failures[request_id] = (failure.reason, time.perf_counter() - started)

    deadlines: dict[str, Any] = {"upstream_total_timeout_seconds": 30, "upstream_token_timeout_seconds": 0.5}
    async with (
        serve_scripted(upstream) as (_, url),
        upstream_client(url, **deadlines, **service_account(url)) as client,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(call, client, "req-leader")
        await arrived.wait()  # the leader's fetch is dripping: the next callers wait for it
        for number in range(3):
            tasks.start_soon(call, client, f"req-waiter-{number}")
    assert len(failures) == 4
    for reason, elapsed in failures.values():
        assert reason == "token endpoint gave no whole answer within 0.5 s"
        assert elapsed < 3, f"released after {elapsed:.1f} s for a 0.5 s token deadline"
    assert len(upstream.token_requests) == 1  # the waiters shared the leader's failure
    assert upstream.seen == []


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        pytest.param(streamed(BIG), "over 65536 bytes", id="50-MiB-streamed"),
        pytest.param(gzipped(GZIP_BOMB), "over 65536 bytes", id="gzip-bomb"),
        pytest.param(gzipped(b"not gzip at all"), "does not inflate", id="bad-gzip"),
    ],
)
async def test_a_huge_token_answer_is_refused_without_buffering_it(handler: Handler, reason: str) -> None:
    assert len(GZIP_BOMB) < MAX_TOKEN_BODY_BYTES
    upstream = ScriptedUpstream(token_handler=handler)
    before = rss_bytes()
    async with serve_scripted(upstream) as (_, url), upstream_client(url, **service_account(url)) as client:
        failure = await failure_of(client)
    grown = rss_bytes() - before
    assert failure.reason.startswith("token endpoint sent HTTP 200 with a body")
    assert reason in failure.reason
    assert grown < 24 * 1024 * 1024, f"RSS grew by {grown >> 20} MiB"
    assert upstream.token_requests[0].headers["accept-encoding"] == "gzip, deflate"
    assert upstream.seen == []


async def test_readyz_reports_a_failing_token_endpoint_until_a_good_fetch(tmp_path: Path) -> None:
    clock = Ticker()
    upstream = ScriptedUpstream(token_handler=answer(401, {"error": "invalid_client"}))
    async with serve_scripted(upstream) as (_, url):
        settings = sqlite_settings(tmp_path, backend="upstream", upstream_url=url, **service_account(url))
        async with httpx.AsyncClient(base_url=url) as http:
            client = UpstreamClient.from_settings(settings.upstream, http, clock=clock)
            async with run_server(create_app(settings, backend=client)) as gateway, httpx.AsyncClient() as probe:
                before = await probe.get(f"{gateway}/readyz")
                assert (before.status_code, before.json()["tokenEndpoint"]) == (200, "not asked yet")

                await failure_of(client)
                failing = await probe.get(f"{gateway}/readyz")
                assert failing.status_code == 503
                assert failing.json()["status"] == "unavailable"
                assert failing.json()["circuit"] == "closed"  # one failure: the breaker is not why
                assert failing.json()["tokenEndpoint"] == "failing"
                assert failing.json()["tokenEndpointError"] == "token endpoint answered HTTP 401"
                assert CLIENT_SECRET not in failing.text
                assert len(upstream.token_requests) == 1  # the check itself asks again only after a pause

                upstream.token_handler = None  # the endpoint recovers: the next good fetch makes it ready
                assert (await client.regenerate(REF, Caller(request_id="req-good"))).otp == FAKE_OTP
                ready = await probe.get(f"{gateway}/readyz")
                assert (ready.status_code, ready.json()["tokenEndpoint"]) == (200, "ok")


async def test_the_readiness_check_itself_tries_a_failed_token_endpoint_again_after_a_pause() -> None:
    """Out of rotation, an instance gets no calls: its readiness check must find the recovery itself."""
    clock = Ticker()
    upstream = ScriptedUpstream(token_handler=answer(503, "<html>down</html>"))
    async with (
        serve_scripted(upstream) as (_, url),
        upstream_client(url, clock=clock, **service_account(url)) as client,
    ):
        await failure_of(client)
        upstream.token_handler = None
        clock.advance(TOKEN_PROBE_SECONDS - 1)
        assert not (await client.readiness()).ready
        assert len(upstream.token_requests) == 1
        clock.advance(1)
        readiness = await client.readiness()
        assert readiness.ready
        assert readiness.details["tokenEndpoint"] == "ok"
        assert len(upstream.token_requests) == 2
        assert (await client.regenerate(REF, Caller(request_id="req-after"))).otp == FAKE_OTP
    assert len(upstream.token_requests) == 2  # the token the check fetched serves the calls
    assert upstream.token_requests[1].headers["x-request-id"] == "readiness-probe"
