"""`KdfPool`: the OTP hash runs on a bounded pool of worker threads, and the event loop stays free.

No fixed timing: the loop's worst stall while the pool is saturated is compared with the duration
of one hash measured in the same test, with a wide margin.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from gateway.engine import otp as otp_module
from gateway.engine.otp import KdfPool
from gateway.settings import Settings, SettingsError
from tests.utils import run_server

pytestmark = pytest.mark.anyio

SAMPLE_OTP = "TESTOTP8"  # an obviously fake value
HIGH_COST = 16  # scrypt N = 65536: 64 MiB and a few hundred milliseconds a hash


class Concurrency:
    """Counts how many instrumented calls run at once, across threads."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.calls = 0
        self._lock = threading.Lock()

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.02)  # long enough for the others to pile up
            yield
        finally:
            with self._lock:
                self.now -= 1


@pytest.fixture
def concurrency(monkeypatch: pytest.MonkeyPatch) -> Concurrency:
    counter = Concurrency()

    def hash_otp(otp: str, cost: int) -> str:
        with counter.running():
            return f"hash-of-{otp}-{cost}"

    def verify_otp(otp: str, encoded: str) -> bool:
        with counter.running():
            return encoded == f"hash-of-{otp}-4"

    monkeypatch.setattr(otp_module, "hash_otp", hash_otp)
    monkeypatch.setattr(otp_module, "verify_otp", verify_otp)
    return counter


@pytest.mark.parametrize("workers", [1, 3])
async def test_the_pool_never_runs_more_than_its_workers_at_once(concurrency: Concurrency, workers: int) -> None:
    pool = KdfPool(workers)
    results: list[object] = []

    async def hash_one() -> None:
        results.append(await pool.hash(SAMPLE_OTP, 4))

    async def verify_one() -> None:
        results.append(await pool.verify(SAMPLE_OTP, f"hash-of-{SAMPLE_OTP}-4"))

    async with anyio.create_task_group() as tasks:
        for _ in range(4 * workers):
            tasks.start_soon(hash_one)
            tasks.start_soon(verify_one)
        await anyio.sleep(0.01)
        assert pool.busy == workers
        assert pool.waiting > 0
    assert concurrency.calls == 8 * workers
    assert concurrency.most == workers  # hashes and checks share the one bound, and fill it
    assert results.count(True) == 4 * workers
    assert (pool.busy, pool.waiting) == (0, 0)


async def test_a_cancelled_caller_keeps_its_worker_until_the_hash_ends(concurrency: Concurrency) -> None:
    """The thread cannot be stopped, so its turn is not given away early: never more than `workers` threads."""
    pool = KdfPool(1)
    async with anyio.create_task_group() as tasks:
        for _ in range(3):
            tasks.start_soon(pool.hash, SAMPLE_OTP, 4)
        await anyio.sleep(0.005)
        tasks.cancel_scope.cancel()
    assert concurrency.most == 1
    assert pool.busy == 0


def test_a_pool_is_made_without_an_event_loop_and_takes_one_only_when_used() -> None:
    pool = KdfPool(2)
    assert (pool.workers, pool.busy, pool.waiting) == (2, 0, 0)
    with pytest.raises(ValueError, match="at least one worker"):
        KdfPool(0)


async def test_the_pool_hashes_and_verifies_for_real() -> None:
    pool = KdfPool(2)
    encoded = await pool.hash(SAMPLE_OTP, 4)
    assert encoded.startswith("scrypt$4$8$1$")
    assert await pool.verify(SAMPLE_OTP, encoded)
    assert not await pool.verify("WRONGOTP", encoded)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a nice value is per thread on Linux only")
async def test_the_pools_threads_run_below_the_loops_priority_and_close_lets_them_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[threading.Thread, int]] = []

    def hash_otp(otp: str, cost: int) -> str:
        thread = threading.current_thread()
        seen.append((thread, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return "hashed"

    monkeypatch.setattr(otp_module, "hash_otp", hash_otp)
    loop_niceness = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    pool = KdfPool(2, niceness=5)
    for _ in range(4):
        assert await pool.hash(SAMPLE_OTP, 4) == "hashed"
    assert {niceness for _, niceness in seen} == {min(19, loop_niceness + 5)}
    assert all(thread.name.startswith("gateway-kdf") for thread, _ in seen)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == loop_niceness  # the loop's own is untouched
    pool.close()
    with anyio.fail_after(5):
        while any(thread.is_alive() for thread, _ in seen):  # noqa: ASYNC110 (threads offer no event)
            await anyio.sleep(0.01)


# ---------------------------------------------------------------------------------------------
# The event loop is not blocked while the pool is saturated (hashlib.scrypt releases the GIL).
#
# A loop blocked by the KDF stalls for a whole hash, again and again; a busy shared machine can
# delay one probe now and then. So the probe runs for up to WINDOWS windows of one hash each and
# passes at the first window whose worst probe stays under a quarter of a hash: a KDF that held
# the GIL (or ran on the loop) fails every window.

WINDOWS = 3


def one_hash_seconds() -> float:
    """One hash at HIGH_COST, on this thread: how long the loop would stall if it ran the KDF."""
    started = time.perf_counter()
    otp_module.hash_otp(SAMPLE_OTP, HIGH_COST)
    return time.perf_counter() - started


@asynccontextmanager
async def saturated(pool: KdfPool, hash_once: Callable[[], Awaitable[object]]) -> AsyncIterator[None]:
    """`pool` kept full for the body's duration: twice its workers keep hashing, the rest queue."""
    stop = False

    async def keep_hashing() -> None:
        while not stop:
            await hash_once()

    async with anyio.create_task_group() as tasks:
        for _ in range(2 * pool.workers):
            tasks.start_soon(keep_hashing)
        with anyio.fail_after(10):
            while pool.busy < pool.workers:  # noqa: ASYNC110 (the pool offers no event)
                await anyio.sleep(0.005)
        yield
        assert pool.busy == pool.workers  # still saturated at the end
        stop = True


async def worst_per_window(probe: Callable[[], Awaitable[object]], window: float, bound: float) -> list[float]:
    """The slowest `probe` of each window of `window` seconds, until one stays under `bound`."""
    worst: list[float] = []
    for _ in range(WINDOWS):
        slowest, probes = 0.0, 0
        deadline = time.perf_counter() + window
        while time.perf_counter() < deadline or probes < 5:
            started = time.perf_counter()
            await probe()
            slowest = max(slowest, time.perf_counter() - started)
            probes += 1
        worst.append(slowest)
        if slowest < bound:
            break
    return worst


def report(worst: list[float], hash_seconds: float) -> str:
    return f"slowest probe per window {[round(w * 1000) for w in worst]} ms; one hash {hash_seconds * 1000:.0f} ms"


async def test_the_loop_keeps_turning_while_the_pool_is_saturated() -> None:
    hash_seconds = one_hash_seconds()
    pool = KdfPool(2)
    async with saturated(pool, lambda: pool.hash(SAMPLE_OTP, HIGH_COST)):
        worst = await worst_per_window(lambda: anyio.sleep(0.001), hash_seconds, hash_seconds / 4)
    assert worst[-1] < hash_seconds / 4, report(worst, hash_seconds)


async def test_healthz_answers_while_the_pool_is_saturated() -> None:
    """A minimal app served by uvicorn: /healthz answers on the loop while /hash requests fill the pool."""
    pool = KdfPool(2)

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def hash_route(request: Request) -> JSONResponse:
        return JSONResponse({"hash": await pool.hash(SAMPLE_OTP, HIGH_COST)})

    async def get_healthz() -> None:
        assert (await http.get("/healthz")).text == "ok"

    app = Starlette(routes=[Route("/healthz", healthz), Route("/hash", hash_route, methods=["POST"])])
    hash_seconds = one_hash_seconds()
    async with (
        run_server(app) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as http,
        saturated(pool, lambda: http.post("/hash")),
    ):
        worst = await worst_per_window(get_healthz, hash_seconds, hash_seconds / 4)
    assert worst[-1] < hash_seconds / 4, report(worst, hash_seconds)


# ---------------------------------------------------------------------------------------------
# GATEWAY_KDF_WORKERS


def test_kdf_workers_defaults_to_the_usable_cpus() -> None:
    settings = Settings.from_env({"GATEWAY_ENV_FILE": ""})
    assert settings.kdf_workers == max(1, min(64, len(os.sched_getaffinity(0))))


def test_kdf_workers_is_read_and_bounded() -> None:
    assert Settings.from_env({"GATEWAY_ENV_FILE": "", "GATEWAY_KDF_WORKERS": "7"}).kdf_workers == 7
    for raw in ("0", "65", "two"):
        with pytest.raises(SettingsError, match="GATEWAY_KDF_WORKERS"):
            Settings.from_env({"GATEWAY_ENV_FILE": "", "GATEWAY_KDF_WORKERS": raw})
