"""Making and checking credentials: the alphabet, the draw, and the OTP's salted scrypt hash.

Hashing is deliberately slow. On the event loop it runs in worker threads, through a `KdfPool`
(one per engine: at most `GATEWAY_KDF_WORKERS` hashes at once, on threads of its own, apart from
anyio's shared ones). `hashlib.scrypt` releases the GIL while it works, so the loop keeps serving
meanwhile (tests/test_kdf_pool.py). On Linux the pool's threads run at a lower priority than the
event loop's (`KDF_NICENESS`): sharing a core with a hash, the loop gets it back as soon as it has
work, instead of at the scheduler's next turn.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import secrets
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import anyio

from gateway.metrics import KDF_IN_FLIGHT

# Upper case letters and digits without the look-alikes 0/O and 1/I/L: 31 symbols.
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
ACCESS_ID_LENGTH = 6
OTP_LENGTH = 8
_R, _P = 8, 1
_SALT_BYTES = 16

KDF_NICENESS = 10
"""How much lower than the process's the KDF threads' priority is (Linux's per-thread nice value):
measured with the pool saturated on the event loop's core (`scripts/bench`, scenario 4), `/healthz`
p99 went from 4.5 to 1.7 ms and the hashes per second did not drop."""

log = logging.getLogger(__name__)
A = TypeVar("A")
T = TypeVar("T")
R = TypeVar("R")


_KEPT = 256 - 256 % len(ALPHABET)
"""Random bytes below this map evenly onto `ALPHABET` (8 of them to each symbol); the rest are dropped."""


def draw(length: int) -> str:
    """`length` symbols of `ALPHABET`, uniformly, from `secrets`: one read of the system's random
    source for the whole draw (`secrets.choice` makes one per symbol, each a system call), each
    byte kept only below `_KEPT` so that no symbol is likelier than another."""
    symbols: list[str] = []
    while len(symbols) < length:
        kept = [ALPHABET[byte % len(ALPHABET)] for byte in secrets.token_bytes(length + 2) if byte < _KEPT]
        symbols.extend(kept[: length - len(symbols)])
    return "".join(symbols)


def new_access_id() -> str:
    return draw(ACCESS_ID_LENGTH)


def new_otp() -> str:
    return draw(OTP_LENGTH)


def _scrypt(otp: str, salt: bytes, cost: int) -> bytes:
    n = 1 << cost
    return hashlib.scrypt(otp.encode(), salt=salt, n=n, r=_R, p=_P, maxmem=256 * n * _R, dklen=32)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_otp(otp: str, cost: int) -> str:
    """`scrypt$<log2 N>$<r>$<p>$<salt>$<hash>`: self-describing, so the cost can change later."""
    salt = secrets.token_bytes(_SALT_BYTES)
    return f"scrypt${cost}${_R}${_P}${_b64(salt)}${_b64(_scrypt(otp, salt, cost))}"


def verify_otp(otp: str, encoded: str) -> bool:
    """Constant-time check of `otp` against a `hash_otp` value."""
    try:
        scheme, cost, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt" or (int(r), int(p)) != (_R, _P):
            return False
        candidate = _scrypt(otp, base64.b64decode(salt), int(cost))
    except ValueError:
        return False
    return hmac.compare_digest(candidate, base64.b64decode(digest))


class KdfPool:
    """A bounded pool of worker threads for the KDF: at most `workers` hashes or checks at once.

    Its threads are its own (not anyio's, shared by every other `to_thread` call), made when first
    needed and lowered in priority by `niceness` on Linux; `close` lets them go. Its
    `anyio.CapacityLimiter` is created on first use, inside the running event loop, so a pool can be
    built anywhere (an app factory, a lifespan) but must not outlive its event loop. Callers beyond
    `workers` wait their turn on the loop, without blocking it. A cancelled caller still waits for
    its hash to finish, so the threads never have more than `workers` hashes to do.
    """

    def __init__(self, workers: int, *, niceness: int = KDF_NICENESS) -> None:
        if workers < 1:
            raise ValueError("a KdfPool needs at least one worker")
        self.workers = workers
        self.niceness = niceness
        self._limiter: anyio.CapacityLimiter | None = None
        self._threads: ThreadPoolExecutor | None = None

    def _turns(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.workers)
        return self._limiter

    @property
    def busy(self) -> int:
        """Hashes or checks running now."""
        return 0 if self._limiter is None else int(self._limiter.borrowed_tokens)

    @property
    def waiting(self) -> int:
        """Callers waiting for a worker."""
        return 0 if self._limiter is None else self._limiter.statistics().tasks_waiting

    async def hash(self, otp: str, cost: int) -> str:
        """`hash_otp(otp, cost)` on one of the pool's workers."""
        return await self._run(hash_otp, otp, cost)

    async def hash_many(self, otps: Sequence[str], cost: int) -> list[str]:
        """`hash_otp` of each of `otps`, in order, one after the other on one worker: one hand-off to
        a thread for all of them (what `OtpReserve` asks for when a hash costs little)."""
        return await self._run(_hash_each, otps, cost)

    async def verify(self, otp: str, encoded: str) -> bool:
        """`verify_otp(otp, encoded)` on one of the pool's workers."""
        return await self._run(verify_otp, otp, encoded)

    async def _run(self, work: Callable[[A, T], R], otp: A, argument: T) -> R:
        with KDF_IN_FLIGHT.track_inprogress():
            async with self._turns():
                if self._threads is None:
                    self._threads = ThreadPoolExecutor(
                        self.workers, "gateway-kdf", initializer=_lower_priority, initargs=(self.niceness,)
                    )
                running = asyncio.get_running_loop().run_in_executor(self._threads, work, otp, argument)
                with anyio.CancelScope(shield=True):  # the turn is held until the thread is done
                    done = await running
                return done  # noqa: RET504 (outside the scope: mypy sees that a cancel scope may swallow)

    def close(self) -> None:
        """Let the threads go once their work is done (the app's lifespan calls this)."""
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)


def _hash_each(otps: Sequence[str], cost: int) -> list[str]:
    return [hash_otp(otp, cost) for otp in otps]


def _lower_priority(niceness: int) -> None:
    """Run the calling thread `niceness` lower than now (Linux only: elsewhere a nice value is the
    whole process's, and the threads keep the process's priority)."""
    if niceness <= 0 or sys.platform != "linux":
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + niceness)
    except OSError:
        log.warning("could not lower the KDF thread's priority; it shares the CPU with the event loop", exc_info=True)
