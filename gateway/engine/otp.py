"""Making and checking credentials: the alphabet, the draw, and the OTP's salted scrypt hash.

Hashing is deliberately slow. On the event loop it runs in worker threads, through a `KdfPool`
(one per engine: at most `GATEWAY_KDF_WORKERS` hashes at once, apart from anyio's shared thread
limit). `hashlib.scrypt` releases the GIL while it works, so the loop keeps serving meanwhile
(tests/test_kdf_pool.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import anyio
import anyio.to_thread

from gateway.metrics import KDF_IN_FLIGHT

# Upper case letters and digits without the look-alikes 0/O and 1/I/L: 31 symbols.
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
ACCESS_ID_LENGTH = 6
OTP_LENGTH = 8
_R, _P = 8, 1
_SALT_BYTES = 16


def draw(length: int) -> str:
    """`length` symbols of `ALPHABET`, each from `secrets`."""
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


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

    Its `anyio.CapacityLimiter` is its own (not anyio's default one, shared by every other
    `to_thread` call) and is created on first use, inside the running event loop, so a pool can be
    built anywhere (an app factory, a lifespan) but must not outlive its event loop. Callers beyond
    `workers` wait their turn on the loop, without blocking it. A cancelled caller still waits for
    its hash to finish, so the threads never exceed `workers`.
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("a KdfPool needs at least one worker")
        self.workers = workers
        self._limiter: anyio.CapacityLimiter | None = None

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
        with KDF_IN_FLIGHT.track_inprogress():
            return await anyio.to_thread.run_sync(hash_otp, otp, cost, limiter=self._turns())

    async def verify(self, otp: str, encoded: str) -> bool:
        """`verify_otp(otp, encoded)` on one of the pool's workers."""
        with KDF_IN_FLIGHT.track_inprogress():
            return await anyio.to_thread.run_sync(verify_otp, otp, encoded, limiter=self._turns())
