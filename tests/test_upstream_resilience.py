"""Back-pressure: the circuit breaker (with an injected clock), the concurrency limit, connect retries, /readyz."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from gateway.app import create_app
from gateway.domain import Caller, ErrorCode, Readiness, Refusal
from gateway.upstream import UpstreamClient
from gateway.upstream.resilience import BreakerState, CircuitBreaker, ConnectRetry, Outcome
from tests.demo import READY_REF
from tests.upstream_servers import (
    FAKE_OTP,
    ScriptedUpstream,
    SleepRecorder,
    Ticker,
    answer,
    credentials_body,
    ors_error,
    serve_scripted,
    upstream_client,
    upstream_settings,
)
from tests.utils import run_server

pytestmark = pytest.mark.anyio

CALLER = Caller(request_id="req-resilience")
REF = READY_REF
UNAVAILABLE = answer(503, {"message": "maintenance"})
OK = answer(200, credentials_body())


async def outcome(client: UpstreamClient) -> ErrorCode | None:
    try:
        await client.regenerate(REF, CALLER)
    except Refusal as refusal:
        return refusal.code
    return None


# ---------------------------------------------------------------------------------------------
# The breaker on its own


def state_of(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state


def test_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(3, 30, clock=Ticker())
    for result in (Outcome.FAILURE, Outcome.FAILURE, Outcome.SUCCESS, Outcome.FAILURE, Outcome.FAILURE):
        breaker.settle(breaker.admit("r"), result)
    assert state_of(breaker) is BreakerState.CLOSED
    breaker.settle(breaker.admit("r"), Outcome.NONE)  # no verdict: neither resets nor counts
    assert breaker.consecutive_failures == 2
    breaker.settle(breaker.admit("r"), Outcome.FAILURE)
    assert state_of(breaker) is BreakerState.OPEN


def test_half_open_lets_one_trial_through_and_its_failure_reopens() -> None:
    clock = Ticker()
    breaker = CircuitBreaker(1, 30, clock=clock)
    breaker.settle(breaker.admit("r"), Outcome.FAILURE)
    clock.advance(29.9)
    with pytest.raises(Refusal):
        breaker.admit("r")
    clock.advance(0.1)
    assert state_of(breaker) is BreakerState.HALF_OPEN
    probe = breaker.admit("r")
    with pytest.raises(Refusal):
        breaker.admit("r")  # one trial at a time
    breaker.settle(probe, Outcome.FAILURE)
    assert state_of(breaker) is BreakerState.OPEN
    clock.advance(30)
    breaker.settle(breaker.admit("r"), Outcome.NONE)  # a cancelled trial decides nothing
    assert state_of(breaker) is BreakerState.HALF_OPEN
    breaker.settle(breaker.admit("r"), Outcome.SUCCESS)
    assert state_of(breaker) is BreakerState.CLOSED


def test_calls_admitted_before_the_breaker_opened_do_not_move_it() -> None:
    breaker = CircuitBreaker(1, 30, clock=Ticker())
    early = breaker.admit("r")
    breaker.settle(breaker.admit("r"), Outcome.FAILURE)
    breaker.settle(early, Outcome.SUCCESS)
    assert state_of(breaker) is BreakerState.OPEN


@pytest.mark.parametrize(("jitter", "expected"), [(0.0, [0.5, 1.0, 2.0]), (1.0, [1.0, 2.0, 4.0])])
def test_backoff_is_exponential_bounded_and_jittered(jitter: float, expected: list[float]) -> None:
    retry = ConnectRetry(3, 1.0, jitter=lambda: jitter)
    assert [retry.delay(attempt) for attempt in range(3)] == expected


# ---------------------------------------------------------------------------------------------
# The breaker around real upstream calls


async def test_the_breaker_opens_fails_fast_without_the_upstream_and_recovers() -> None:
    clock = Ticker()
    upstream = ScriptedUpstream(handler=UNAVAILABLE)
    async with serve_scripted(upstream) as (_, url):
        options: dict[str, Any] = {"upstream_breaker_failure_threshold": 3, "upstream_breaker_reset_seconds": 30.0}
        async with upstream_client(url, clock=clock, **options) as client:
            for _ in range(3):
                assert await outcome(client) is ErrorCode.UPSTREAM_UNAVAILABLE
            assert len(upstream.seen) == 3
            assert (await client.readiness()).details["circuit"] == "open"

            # Open: refused at once, the upstream untouched.
            with anyio.fail_after(0.5):
                for _ in range(10):
                    assert await outcome(client) is ErrorCode.UPSTREAM_UNAVAILABLE
            assert len(upstream.seen) == 3

            # After the pause, one trial call; the upstream has recovered, so the breaker closes.
            upstream.handler = OK
            clock.advance(30)
            assert (await client.readiness()).details["circuit"] == "half-open"
            assert await outcome(client) is None
            assert await client.readiness() == Readiness(
                True, {"circuit": "closed", "consecutiveFailures": 0, "inFlight": 0, "waiting": 0}
            )
            assert await outcome(client) is None
            assert len(upstream.seen) == 5


async def test_refusals_the_upstream_meant_do_not_open_the_breaker() -> None:
    upstream = ScriptedUpstream(handler=answer(400, ors_error(None, "Invalid device ID")))
    async with (
        serve_scripted(upstream) as (_, url),
        upstream_client(url, upstream_breaker_failure_threshold=2) as client,
    ):
        for _ in range(5):
            assert await outcome(client) is ErrorCode.INVALID_DEVICE
        upstream.handler = answer(429, None, {"Retry-After": "1"})
        assert await outcome(client) is ErrorCode.RATE_LIMITED
        assert (await client.readiness()).details["circuit"] == "closed"
    assert len(upstream.seen) == 6


async def test_timeouts_and_refused_connections_count_as_failures() -> None:
    upstream = ScriptedUpstream()
    upstream.handler = upstream.hang
    async with serve_scripted(upstream) as (_, url):
        options: dict[str, Any] = {"upstream_breaker_failure_threshold": 2, "upstream_read_timeout_seconds": 0.1}
        async with upstream_client(url, **options) as client:
            assert await outcome(client) is ErrorCode.UPSTREAM_UNAVAILABLE
            assert await outcome(client) is ErrorCode.UPSTREAM_UNAVAILABLE
            assert (await client.readiness()).details["circuit"] == "open"
    async with upstream_client(url, sleep=SleepRecorder(), upstream_breaker_failure_threshold=1) as client:
        assert await outcome(client) is ErrorCode.UPSTREAM_UNAVAILABLE  # the server is gone: refused
        assert (await client.readiness()).details["circuit"] == "open"


# ---------------------------------------------------------------------------------------------
# The concurrency limit


async def test_excess_calls_wait_up_to_the_bound_then_are_refused_unsent() -> None:
    upstream = ScriptedUpstream()
    upstream.handler = upstream.hang
    results: list[ErrorCode | None] = []
    options: dict[str, Any] = {"upstream_max_concurrency": 1, "upstream_queue_timeout_seconds": 0.1}
    async with serve_scripted(upstream) as (_, url), upstream_client(url, **options) as client:
        async with anyio.create_task_group() as tasks:

            async def first() -> None:
                results.append(await outcome(client))

            tasks.start_soon(first)
            with anyio.fail_after(5):
                while not upstream.seen:  # noqa: ASYNC110 (the scripted server records; it has no event)
                    await anyio.sleep(0.01)
            assert (await client.readiness()).details["inFlight"] == 1
            with anyio.fail_after(1):
                assert await outcome(client) is ErrorCode.UPSTREAM_UNAVAILABLE
            assert len(upstream.seen) == 1
            upstream.release.set()
        assert results == [None]
        assert (await client.readiness()).details["circuit"] == "closed"  # a full queue is not the upstream's failure


async def test_waiting_calls_get_their_turn_and_never_exceed_the_limit() -> None:
    concurrent = [0, 0]  # now, most

    async def slow_ok(request: Request) -> Response:
        concurrent[0] += 1
        concurrent[1] = max(concurrent)
        await anyio.sleep(0.02)
        concurrent[0] -= 1
        return await OK(request)

    upstream = ScriptedUpstream(handler=slow_ok)
    options: dict[str, Any] = {"upstream_max_concurrency": 2, "upstream_queue_timeout_seconds": 5.0}
    results: list[ErrorCode | None] = []

    async def call(client: UpstreamClient) -> None:
        results.append(await outcome(client))

    async with (
        serve_scripted(upstream) as (_, url),
        upstream_client(url, **options) as client,
        anyio.create_task_group() as tasks,
    ):
        for _ in range(8):
            tasks.start_soon(call, client)
    assert results == [None] * 8
    assert len(upstream.seen) == 8
    assert concurrent[1] == 2


# ---------------------------------------------------------------------------------------------
# /readyz


async def test_readyz_shows_the_breaker(tmp_path: Path) -> None:
    clock = Ticker()
    upstream = ScriptedUpstream(handler=UNAVAILABLE)
    async with serve_scripted(upstream) as (_, url):
        # The app's store and data folder in the test's own folder, not the working directory's ./data.
        store = {"data_dir": str(tmp_path), "database_url": f"sqlite+aiosqlite:///{tmp_path / 'store.sqlite3'}"}
        settings = upstream_settings(url, upstream_breaker_failure_threshold=1, **store)
        async with httpx.AsyncClient(base_url=url) as http:
            client = UpstreamClient.from_settings(settings.upstream, http, clock=clock)
            async with run_server(create_app(settings, backend=client)) as gateway, httpx.AsyncClient() as probe:
                ready = await probe.get(f"{gateway}/readyz")
                assert ready.status_code == 200
                assert ready.json()["circuit"] == "closed"
                assert ready.json()["status"] == "ready"

                assert await outcome(client) is ErrorCode.UPSTREAM_UNAVAILABLE
                not_ready = await probe.get(f"{gateway}/readyz")
                assert not_ready.status_code == 503
                assert not_ready.json()["status"] == "unavailable"
                assert not_ready.json()["circuit"] == "open"
                assert not_ready.json()["backend"] == "upstream"

                clock.advance(settings.upstream.breaker_reset_seconds)
                upstream.handler = OK
                assert (await probe.get(f"{gateway}/readyz")).json()["circuit"] == "half-open"
                assert (await client.regenerate(REF, CALLER)).otp == FAKE_OTP
                assert (await probe.get(f"{gateway}/readyz")).status_code == 200
