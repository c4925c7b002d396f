"""Helpers that start real servers for tests: uvicorn on a free loopback port (in the test's event
loop), or `gateway serve` in its own process; stopped (by pid) when done."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
import httpx
import uvicorn
from starlette.types import ASGIApp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def run_server(app: ASGIApp, *, port: int | None = None) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 (lifespan included) and yield its base URL.

    Like uvicorn's own `tests/utils.py`: the server runs as a task on the test's event loop.
    """
    config = uvicorn.Config(app, host="127.0.0.1", port=port or free_port(), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:
                if server.should_exit:
                    raise RuntimeError("the server did not start")
                await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{config.port}"
        finally:
            server.should_exit = True


class Served:
    """What `gateway serve` printed, complete once the block has ended: `output` (stdout, and stderr
    unless kept apart) and `log` (stderr when kept apart)."""

    output = ""
    log = ""


def wait_until_up(process: subprocess.Popen[str], url: str) -> None:
    """Poll `url` until it answers 200 (10 s at most); fail at once if `process` exits meanwhile."""
    for _ in range(200):
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise AssertionError(f"{process.args!r} exited early")
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer 200")


@contextmanager
def serving(env: dict[str, str], port: int, *args: str, log_apart: bool = False) -> Iterator[Served]:
    """`gateway serve --port port *args` in its own process; stopped by its pid when the block ends.
    With `log_apart`, stderr (the log) is kept apart from stdout (the banner)."""
    served = Served()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if log_apart else subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_up(process, f"http://127.0.0.1:{port}/healthz")
        yield served
    finally:
        os.kill(process.pid, signal.SIGTERM)
        served.output, log = process.communicate(timeout=20)
        served.log = log or ""
