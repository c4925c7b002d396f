"""`OtpReserve`: new OTPs drawn and hashed ahead of need, so that a regeneration need not wait for the KDF.

A regeneration issues a new OTP and stores only its slow, salted hash (`otp.hash_otp`). Hashed when
the request comes, the hash is most of the request's time (tens of milliseconds at the default
cost) and a hand-off to a KDF thread and back (most of it at the lowest cost). The reserve keeps up
to `size` OTPs ready, each with its hash, drawn and hashed by the engine's `KdfPool` in the
background: a regeneration takes one (`take`, which never waits) and its unit of work judges the
device and stores the pair in one go. When the reserve is empty the engine hashes a new OTP itself,
as it did without one, so the reserve changes how soon an answer comes, never what it is.

- Lazy: nothing is hashed ahead before a regeneration has hashed an OTP of its own (an idle gateway,
  or one that has only refused, spends no KDF time).
- Each OTP is issued at most once: `take` removes it. One taken by an attempt that was refused
  before anything was stored (the device's facts, a rate limit) never left the gateway and goes
  back (`give_back`); one whose unit may have been stored (a failed commit) is dropped.
- A refill starts once an attempt has ended (`refill`, after any `give_back`): a refused attempt,
  whose OTP came back, costs no hash; an attempt that found none ready hashes its own OTP first,
  ahead of the refill, on the pool's free threads. An attempt refused with none ready (judged
  before any hash) starts no refill: until a regeneration needs a hash, nothing is hashed ahead.
- Refills run on the pool's threads, as the request's own hashes do (lower priority than the event
  loop, at most `GATEWAY_KDF_WORKERS` at once), several OTPs to a hand-off when a hash is cheap.
- The OTPs wait in this process's memory only, never in the store, a log or a metric; `close` (the
  app's lifespan) stops the refill and forgets them. How many are ready is a metric
  (`gateway_otp_reserve`), and so is each attempt that found none and hashed its own (`missed`,
  `gateway_otp_reserve_misses_total`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from gateway.engine.otp import KdfPool, new_otp
from gateway.metrics import OTP_RESERVE, OTP_RESERVE_MISSES

log = logging.getLogger(__name__)

_HAND_OFF_COST = 10
"""Below this cost a hash takes well under a millisecond: a refill hashes 2^(10 - cost) OTPs (at
most `_MAX_PER_HAND_OFF`) on one thread before handing them back, so that each hand-off carries a
few milliseconds of work."""
_MAX_PER_HAND_OFF = 64


@dataclass(frozen=True, slots=True)
class HashedOtp:
    """A new OTP and its hash, not yet issued."""

    otp: str
    otp_hash: str

    def __repr__(self) -> str:
        return "HashedOtp(otp=…)"  # never the OTP, in a traceback or a log


class OtpReserve:
    """Up to `size` hashed OTPs, ready for the next regenerations; refilled in the background."""

    def __init__(self, kdf: KdfPool, cost: int, size: int) -> None:
        if size < 1:
            raise ValueError("an OtpReserve holds at least one OTP")
        self.kdf = kdf
        self.cost = cost
        self.size = size
        self.per_hand_off = min(_MAX_PER_HAND_OFF, size, 1 << max(0, _HAND_OFF_COST - cost))
        """OTPs one refill job hashes on its thread before handing them back."""
        self._ready: deque[HashedOtp] = deque()
        self._refill: asyncio.Task[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        """OTPs ready now."""
        return len(self._ready)

    def take(self) -> HashedOtp | None:
        """A hashed OTP if one is ready, else None (never waits). The OTP is the caller's: it is not
        handed out again unless given back. Once its attempt has ended (the OTP issued, dropped or
        given back; or, with none ready, the attempt's own hash done), the caller calls `refill`.
        With none ready, an attempt that goes on to hash its own OTP says so (`missed`)."""
        if self._ready:
            taken = self._ready.popleft()
            OTP_RESERVE.set(len(self._ready))
            return taken
        return None

    def missed(self) -> None:
        """An attempt found none ready and hashes an OTP of its own (the metric of misses). Not one
        refused first: it needed no OTP, and a gateway that only refuses never fills the reserve."""
        OTP_RESERVE_MISSES.inc()

    def give_back(self, taken: HashedOtp) -> None:
        """An OTP `take` gave that was not issued: nothing was stored with it (the attempt was
        refused before its unit wrote), so it may be issued later."""
        if not self._closed:
            self._ready.appendleft(taken)
            if len(self._ready) > self.size:  # refilled meanwhile: the newest goes
                self._ready.pop()
            OTP_RESERVE.set(len(self._ready))

    def refill(self) -> None:
        """Start a refill if the reserve is not full (none under way, not closed); never waits."""
        self._start_refill()

    async def fill(self) -> None:
        """Wait until the reserve is full (the refill under way, or one started now)."""
        self._start_refill()
        if self._refill is not None:
            await asyncio.shield(self._refill)

    def _start_refill(self) -> None:
        if self._closed or len(self._ready) >= self.size or (self._refill is not None and not self._refill.done()):
            return
        self._refill = asyncio.get_running_loop().create_task(self._refill_until_full(), name="otp-reserve-refill")

    async def _refill_until_full(self) -> None:
        """Hash OTPs until the reserve is full: up to `kdf.workers` jobs at once, each of `per_hand_off` OTPs."""
        try:
            while not self._closed and len(self._ready) < self.size:
                missing = self.size - len(self._ready)
                jobs = min(self.kdf.workers, -(-missing // self.per_hand_off))
                otps = [[new_otp() for _ in range(self.per_hand_off)] for _ in range(jobs)]
                # Every job ends before the refill goes on (or fails): none is left running on its own.
                hashed = await asyncio.gather(
                    *(self.kdf.hash_many(batch, self.cost) for batch in otps), return_exceptions=True
                )
                if self._closed:
                    return
                for failed in hashed:
                    if isinstance(failed, BaseException):
                        raise failed
                for batch, hashes in zip(otps, hashed, strict=True):
                    assert not isinstance(hashes, BaseException)
                    self._ready.extend(HashedOtp(otp, otp_hash) for otp, otp_hash in zip(batch, hashes, strict=True))
                while len(self._ready) > self.size:  # given back while this batch was hashed
                    self._ready.pop()
                OTP_RESERVE.set(len(self._ready))
        except Exception:
            # The next take starts another refill; meanwhile regenerations hash their own OTPs.
            log.exception("the OTP reserve could not be refilled; regenerations hash their own OTPs meanwhile")

    async def close(self) -> None:
        """Stop refilling (waiting for the hashes under way to end) and forget the OTPs ready.

        The refill's task is not cancelled: a task's cancel goes around `KdfPool`'s shield (an anyio
        cancel scope), so the hash would go on on its thread after the lifespan, its turn given back
        (beyond the pool's bound). The refill stops by itself once its hashes are done: it checks
        `_closed` and adds nothing after it."""
        self._closed = True
        refill, self._refill = self._refill, None
        self._ready.clear()
        OTP_RESERVE.set(0)
        if refill is not None:
            await asyncio.wait([refill])  # the caller's own cancellation is not swallowed
