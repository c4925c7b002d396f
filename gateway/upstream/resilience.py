"""Back-pressure and recovery for upstream calls: connect-only retries, a concurrency limit, a breaker.

- `ConnectRetry` retries a send only when the connection could not be made: nothing reached the
  upstream, so nothing was regenerated. Every other failure may have reached it (each PUT makes
  new credentials and kills the previous pair), so it is reported, never resent.
- `ConcurrencyLimit` bounds upstream calls in flight; the excess waits, up to a bound, for a turn.
- `CircuitBreaker` opens after consecutive upstream failures, fails fast while open (sparing the
  upstream and the callers' time), and after a pause lets one trial call through to close again.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import anyio
import httpx

from gateway.domain import ErrorCode, Refusal
from gateway.metrics import UPSTREAM_CIRCUIT_OPEN

log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
MonotonicClock = Callable[[], float]

# httpx raises these only while opening a connection (TCP connect, TLS handshake): no request was written.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)


class ConnectRetry:
    """Up to `retries` more attempts after a failure to connect, with exponential backoff and jitter."""

    def __init__(
        self,
        retries: int,
        backoff_seconds: float,
        *,
        sleep: Sleep = anyio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self._sleep = sleep
        self._jitter = jitter

    def delay(self, attempt: int) -> float:
        """Pause before retry number `attempt + 1`: between half and all of backoff * 2**attempt.

        Jitter spreads the retries of many callers that failed together; the lower half keeps a pause.
        """
        ceiling: float = self.backoff_seconds * 2**attempt
        return ceiling * (0.5 + self._jitter() / 2)

    async def run(self, send: Callable[[], Awaitable[T]], *, what: str, request_id: str) -> T:
        for attempt in range(self.retries + 1):
            try:
                return await send()
            except NOT_SENT as error:
                if attempt == self.retries:
                    raise
                delay = self.delay(attempt)
                log.warning(
                    "%s: could not connect (%s); retrying in %.2f s (request %s)",
                    what,
                    type(error).__name__,
                    delay,
                    request_id,
                )
                await self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


class ConcurrencyLimit:
    """At most `limit` calls at once; a caller waits up to `wait_seconds` for a turn, then is refused."""

    def __init__(self, limit: int, wait_seconds: float) -> None:
        self.limit = limit
        self.wait_seconds = wait_seconds
        self.waiting = 0
        self._semaphore = anyio.Semaphore(limit)

    @property
    def in_flight(self) -> int:
        return self.limit - self._semaphore.value

    @asynccontextmanager
    async def turn(self, request_id: str) -> AsyncIterator[None]:
        acquired = False
        self.waiting += 1
        try:
            with anyio.move_on_after(self.wait_seconds):
                await self._semaphore.acquire()
                acquired = True
        finally:
            self.waiting -= 1
        if not acquired:
            log.warning(
                "upstream: no free slot within %.1f s (%d in flight); refusing (request %s)",
                self.wait_seconds,
                self.limit,
                request_id,
            )
            raise Refusal(ErrorCode.UPSTREAM_UNAVAILABLE)
        try:
            yield
        finally:
            self._semaphore.release()


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class Outcome(enum.Enum):
    """How a call admitted by the breaker ended."""

    SUCCESS = "success"
    """The upstream answered, whatever it said."""
    FAILURE = "failure"
    """The upstream gave no usable answer."""
    NONE = "none"
    """No verdict on the upstream (cancelled, or never sent because the queue was full)."""


@dataclass(frozen=True)
class Ticket:
    """Leave to call the upstream; `probe` marks the one trial call of a half-open breaker."""

    probe: bool


class CircuitBreaker:
    """Closed → (threshold consecutive failures) → open → (reset_seconds) → half-open → one trial call.

    The trial's success closes the breaker, its failure opens it again. Calls admitted before the
    breaker opened end without effect on it. The clock is injectable so tests need not sleep.
    """

    def __init__(self, failure_threshold: int, reset_seconds: float, *, clock: MonotonicClock = time.monotonic) -> None:
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self.clock = clock
        self.consecutive_failures = 0
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        """The state as a caller arriving now would find it."""
        if self._state is BreakerState.OPEN and self.clock() - self._opened_at >= self.reset_seconds:
            return BreakerState.HALF_OPEN
        return self._state

    def admit(self, request_id: str) -> Ticket:
        """A ticket for one call, or `Refusal(UPSTREAM_UNAVAILABLE)` at once when the breaker is open."""
        self._state = self.state
        if self._state is BreakerState.CLOSED:
            return Ticket(probe=False)
        if self._state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            log.info("upstream circuit half-open: sending one trial call (request %s)", request_id)
            return Ticket(probe=True)
        log.warning("upstream circuit %s: failing fast (request %s)", self._state.value, request_id)
        raise Refusal(ErrorCode.UPSTREAM_UNAVAILABLE)

    def settle(self, ticket: Ticket, outcome: Outcome) -> None:
        """Record how an admitted call ended."""
        if ticket.probe:
            self._probe_in_flight = False
            if outcome is Outcome.SUCCESS:
                self._close()
            elif outcome is Outcome.FAILURE:
                self.consecutive_failures += 1
                self._open()
            return
        if self._state is not BreakerState.CLOSED or outcome is Outcome.NONE:
            return
        if outcome is Outcome.SUCCESS:
            self.consecutive_failures = 0
            return
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.failure_threshold:
            self._open()

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self.clock()
        UPSTREAM_CIRCUIT_OPEN.set(1)
        log.warning(
            "upstream circuit open after %d consecutive failures: failing fast for %.1f s",
            self.consecutive_failures,
            self.reset_seconds,
        )

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self.consecutive_failures = 0
        UPSTREAM_CIRCUIT_OPEN.set(0)
        log.info("upstream circuit closed: the trial call succeeded")
