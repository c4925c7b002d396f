"""Shutdown as an orchestrator does it: SIGTERM to a real `gateway serve` in upstream mode while a
slow upstream call is in flight. `/readyz` answers 503 from the signal on, the call completes with
its credentials and the process exits 0; a call longer than `GATEWAY_SHUTDOWN_TIMEOUT_SECONDS` is
cut at that bound, and the process still exits 0 soon after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType

import anyio
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from gateway.app import create_app
from gateway.shutdown import ShutdownSignal
from gateway.state import AppState
from tests import demo
from tests.test_upstream_parity import base_settings
from tests.upstream_servers import ScriptedUpstream, credentials_body, serve_scripted
from tests.utils import free_port, run_server

BOUND = 3
"""`GATEWAY_SHUTDOWN_TIMEOUT_SECONDS` in these tests."""


def holding(seconds: float, started: anyio.Event) -> ScriptedUpstream:
    """A stand-in whose access-code call answers the credentials after `seconds` (sooner when the test ends)."""
    upstream = ScriptedUpstream()

    async def handle(request: Request) -> Response:
        started.set()
        with anyio.move_on_after(seconds):
            await upstream.release.wait()
        return JSONResponse(credentials_body())

    upstream.handler = handle
    return upstream


@asynccontextmanager
async def gateway(tmp_path: Path, upstream_url: str) -> AsyncIterator[tuple[subprocess.Popen[str], str]]:
    """`gateway serve` in upstream mode on a free port; killed (by pid) if the test left it running."""
    process, base = start(tmp_path, upstream_url)
    try:
        async with httpx.AsyncClient(timeout=1) as probe:
            with anyio.fail_after(20):
                while True:
                    assert process.poll() is None, "gateway serve exited early"
                    try:
                        if (await probe.get(f"{base}/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await anyio.sleep(0.05)
        yield process, base
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=10)


def start(tmp_path: Path, upstream_url: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_ENV_FILE="",
        GATEWAY_DATA_DIR=str(tmp_path / "data"),
        GATEWAY_BACKEND="upstream",
        GATEWAY_UPSTREAM_URL=upstream_url,
        GATEWAY_INSECURE_DISABLE_AUTH="true",
        GATEWAY_SHUTDOWN_TIMEOUT_SECONDS=str(BOUND),
        GATEWAY_LOG_FORMAT="text",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, f"http://127.0.0.1:{port}"


async def exit_code(process: subprocess.Popen[str], within: float) -> int:
    return await anyio.to_thread.run_sync(lambda: process.wait(timeout=within))


def regenerate() -> dict[str, object]:
    return {"query": demo.REGENERATE, "variables": {"input": demo.device_input()}}


@pytest.mark.anyio
async def test_sigterm_drains_the_slow_call_and_readyz_answers_503(tmp_path: Path) -> None:
    started = anyio.Event()
    async with serve_scripted(holding(1.0, started)) as (_, url), gateway(tmp_path, url) as (process, base):
        async with (
            httpx.AsyncClient(base_url=base, timeout=10) as caller,
            httpx.AsyncClient(base_url=base, timeout=5) as probe,
        ):
            assert (await probe.get("/readyz")).status_code == 200  # the probe's connection, kept alive
            results: dict[str, httpx.Response] = {}

            async def call() -> None:
                results["call"] = await caller.post("/graphql", json=regenerate())

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(call)
                with anyio.fail_after(5):
                    await started.wait()  # the call is in flight, held upstream for 1 s
                signalled = time.monotonic()
                os.kill(process.pid, signal.SIGTERM)
                # uvicorn notices the signal on its next tick (0.1 s) and then closes idle connections
                # and the listener; a probe before that, on the kept-alive connection, sees 503.
                try:
                    ready = await probe.get("/readyz")
                except httpx.TransportError:  # the tick came first: closed without an answer
                    ready = None
                if ready is not None:
                    assert ready.status_code == 503
                    assert ready.json()["shutting_down"] is True
                await anyio.sleep(0.3)
                with pytest.raises(httpx.ConnectError):  # the listener is closed: new probes are refused
                    await probe.get("/readyz")
        code = await exit_code(process, within=BOUND + 5)
    answered = results["call"].json()["data"]["regenerateAccessCode"]
    assert answered["__typename"] == "BootstrapCredentials"
    assert answered["otp"]
    assert code == 0
    assert time.monotonic() - signalled < BOUND  # drained by the call's end, not by the bound


@pytest.mark.anyio
async def test_a_call_longer_than_the_bound_is_cut_at_the_bound(tmp_path: Path) -> None:
    started = anyio.Event()
    upstream = holding(30.0, started)
    async with serve_scripted(upstream) as (_, url), gateway(tmp_path, url) as (process, base):
        async with httpx.AsyncClient(base_url=base, timeout=40) as caller, anyio.create_task_group() as tasks:
            outcome: list[httpx.Response] = []

            async def call() -> None:
                outcome.append(await caller.post("/graphql", json=regenerate()))

            tasks.start_soon(call)
            with anyio.fail_after(5):
                await started.wait()
            signalled = time.monotonic()
            os.kill(process.pid, signal.SIGTERM)
            code = await exit_code(process, within=BOUND + 5)
            took = time.monotonic() - signalled
        assert code == 0
        assert BOUND - 0.5 <= took <= BOUND + 3, took
    # Cut: uvicorn cancels the request's task at the bound and, no response having started, answers 500.
    assert [response.status_code for response in outcome] == [500]


def test_the_flag_goes_up_before_the_handler_it_chains() -> None:
    seen: list[bool] = []
    flag = ShutdownSignal()

    def uvicorns(sig: int, frame: FrameType | None) -> None:
        seen.append(flag.started)

    before = signal.signal(signal.SIGTERM, uvicorns)
    try:
        with flag.watching():
            signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is uvicorns  # put back
    finally:
        signal.signal(signal.SIGTERM, before)
    assert seen == [True]
    assert flag.started


@pytest.mark.anyio
async def test_readyz_answers_503_once_the_flag_is_up(tmp_path: Path) -> None:
    """The half of the drain a real SIGTERM makes racy to watch (uvicorn closes idle connections on
    its next tick, 0.1 s): the app, through its lifespan, with its shutdown flag raised as the
    signal handler raises it (`test_the_flag_goes_up_before_the_handler_it_chains`)."""
    app = create_app(base_settings(tmp_path))
    states: list[AppState] = []

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            states.append(scope["state"])
        await app(scope, receive, send)

    async with run_server(recording) as base, httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/readyz")).status_code == 200
        states[-1]["shutdown"].started = True
        draining = await client.get("/readyz")
        alive = await client.get("/healthz")
    assert draining.status_code == 503
    assert draining.json() == {"status": "unavailable", "backend": "local", "shutting_down": True}
    assert alive.status_code == 200  # liveness holds while the drain runs
