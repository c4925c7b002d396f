"""`CredentialEngine`: the `Backend` that issues credentials itself, from the registry in its store.

A regeneration takes an OTP hashed ahead of need from the engine's reserve (`OtpReserve`) and runs
one unit of work: it judges the device's facts with its row locked and stores the new pair, or
commits the refusal (the OTP then goes back to the reserve, never having left the gateway). With no
OTP ready, a first unit of work screens the attempt (`Attempt.screen`: its rate limits, then the
device's facts judged): a refusal is committed there, with no OTP hash spent, and an attempt that
passes writes nothing yet. Then the slow OTP hash is computed off the event loop, and the attempt's
unit of work judges again with the device row locked and writes the new pair. Either way the pair
stored was issued against facts that still hold.

A bootstrap (the device side) spends a pair once: its outcome and its audit row commit together.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from gateway.domain import Attempt, Caller, Clock, Credentials, DeviceRef, ErrorCode, Readiness, Refusal, utc_now
from gateway.engine import tables
from gateway.engine.otp import KdfPool, new_access_id, new_otp
from gateway.engine.reserve import HashedOtp, OtpReserve
from gateway.engine.rules import judge
from gateway.engine.tables import StoredPair
from gateway.store import Store, UnitOfWork

log = logging.getLogger(__name__)


class BootstrapOutcome(enum.Enum):
    """What a device's bootstrap attempt came to (also its audit outcome)."""

    BOOTSTRAPPED = "SUCCESS"
    UNKNOWN_ACCESS_ID = "UNKNOWN_ACCESS_ID"
    WRONG_OTP = "WRONG_OTP"
    EXPIRED = "EXPIRED"
    LOCKED = "LOCKED"
    ALREADY_BOOTSTRAPPED = "ALREADY_BOOTSTRAPPED"
    RATE_LIMITED = "RATE_LIMITED"


@dataclass(frozen=True)
class Bootstrap:
    outcome: BootstrapOutcome
    pair: StoredPair | None = None
    instance_id: str | None = None


class _Unaudited:
    """The `Attempt` of a regeneration asked of the engine directly (tools, tests): no limits, no audit."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def commit(self, change: Callable[[UnitOfWork], Credentials]) -> Credentials:
        return await self.store.submit(change)

    async def begin(self) -> None:
        return None

    async def screen(self, change: Callable[[UnitOfWork], None]) -> None:
        await self.store.submit(change)


class CredentialEngine:
    """The `Backend` that issues credentials itself, from the registry in its store."""

    name = "local"
    _ACCESS_ID_ATTEMPTS = 5

    def __init__(
        self,
        store: Store,
        *,
        otp_ttl: timedelta = timedelta(hours=24),
        kdf_cost: int = 14,
        lockout_after: int = 10,
        kdf: KdfPool | None = None,
        reserve: int = 0,
        clock: Clock = utc_now,
    ) -> None:
        self.store = store
        self.kdf = kdf or KdfPool(os.cpu_count() or 1)
        self.reserve = OtpReserve(self.kdf, kdf_cost, reserve) if reserve > 0 else None
        """Up to `reserve` OTPs hashed ahead of need (`gateway.engine.reserve`); None (0): each
        regeneration hashes its own. `close` stops its refills."""
        self._dummy: str | None = None
        self.lockout_after = lockout_after
        self.otp_ttl = otp_ttl
        self.kdf_cost = kdf_cost
        self.clock = clock

    async def regenerate(self, ref: DeviceRef, caller: Caller, attempt: Attempt | None = None) -> Credentials:
        try:
            return await self._regenerate(ref, attempt or _Unaudited(self.store))
        except SQLAlchemyError:
            # The store failed: log the cause with the request id, answer the documented 500.
            log.exception("store failure while regenerating (request %s)", caller.request_id)
            raise Refusal(ErrorCode.INTERNAL_SERVER_ERROR) from None

    async def _regenerate(self, ref: DeviceRef, attempt: Attempt | _Unaudited) -> Credentials:
        reserve = self.reserve
        reserved = reserve.take() if reserve is not None else None
        if reserve is None or reserved is None:
            return await self._hash_and_issue(ref, attempt)
        # Hashed ahead: one unit of work judges the device (locked) and stores the pair.
        try:
            return await self._issue(ref, attempt, reserved)
        except Refusal:
            reserve.give_back(reserved)  # refused before its unit wrote: the OTP never left
            raise
        finally:
            reserve.refill()  # once the attempt has ended; after a refusal, nothing is missing

    async def _hash_and_issue(self, ref: DeviceRef, attempt: Attempt | _Unaudited) -> Credentials:
        """With no OTP hashed ahead: screen the attempt first (over a limit, or a device the
        rules refuse: refused in that unit, no hash spent), then hash one, then judge again and
        store. An attempt that hashed its own OTP starts the reserve's refill once it has ended (a
        gateway that only ever refuses hashes nothing ahead)."""

        def screen(work: UnitOfWork) -> None:
            refusal = judge(ref, tables.facts(work.connection, ref))
            if refusal is not None:
                raise Refusal(refusal)

        await attempt.screen(screen)
        if self.reserve is not None:
            self.reserve.missed()
        otp = new_otp()
        new = HashedOtp(otp, await self.kdf.hash(otp, self.kdf_cost))
        try:
            return await self._issue(ref, attempt, new)
        finally:
            if self.reserve is not None:
                self.reserve.refill()

    async def _issue(self, ref: DeviceRef, attempt: Attempt | _Unaudited, new: HashedOtp) -> Credentials:
        """The attempt's unit of work: judge the device's facts with its row locked and store `new`
        with a fresh access ID, so that the pair stored was issued against facts that still hold."""

        def issue(work: UnitOfWork) -> Credentials:
            facts = tables.facts(work.connection, ref, lock=True)
            refusal = judge(ref, facts)
            if refusal is not None:
                raise Refusal(refusal)
            assert facts.device is not None
            access_id = new_access_id()
            issued_at = self.clock()
            expires_at = issued_at + self.otp_ttl
            tables.replace_pair(
                work.connection,
                ref,
                access_id=access_id,
                otp_hash=new.otp_hash,
                issued_at=issued_at,
                expires_at=expires_at,
            )
            return Credentials(
                access_id=access_id, otp=new.otp, device_id=facts.device.instance_id, expires_at=expires_at
            )

        for _ in range(self._ACCESS_ID_ATTEMPTS):
            try:
                return await attempt.commit(issue)
            except IntegrityError:
                # Another process took this access id at the same moment: nothing was committed; draw again.
                continue
        raise Refusal(ErrorCode.INTERNAL_SERVER_ERROR)

    async def close(self) -> None:
        """Stop the reserve's refills and forget its OTPs (the app's lifespan calls this)."""
        if self.reserve is not None:
            await self.reserve.close()

    async def readiness(self) -> Readiness:
        reachable = await self.store.ping()
        return Readiness(reachable, {"store": "reachable" if reachable else "unreachable"})

    async def bootstrap(self, access_id: str, otp: str, attempt: DeviceAttempt | None = None) -> Bootstrap:
        """The device side: spend (access_id, otp) once, with at most `lockout_after` guesses.

        1. One unit of work counts the attempt against its rate limits (`attempt.count`; over a
           limit: `RATE_LIMITED`, and nothing else happens) and reserves a guess on the pair
           (`tables.reserve_guess`): a spent, locked, expired or unknown pair reserves none.
        2. The OTP is checked with the KDF, always exactly once: against the pair's hash when a
           guess was reserved (or the pair is spent: 400 needs a right OTP), else against a
           dummy hash, so that every refusal costs the same and time tells a guesser nothing.
        3. A second unit settles it (spend the pair, or lock it when its guesses are used up)
           and records the audit row (`attempt.record`), together.
        """
        attempt = attempt or _Unrecorded()
        now = self.clock()

        def reserve(work: UnitOfWork) -> tuple[Bootstrap | None, StoredPair | None]:
            if attempt.count(work):
                return Bootstrap(BootstrapOutcome.RATE_LIMITED), None
            return None, tables.reserve_guess(work.connection, access_id, now, self.lockout_after)

        limited, reserved = await self.store.submit(reserve)
        if limited is not None:
            return limited
        pair = reserved or await self.store.read(lambda conn: tables.find_pair(conn, access_id))
        checked = reserved or (pair if pair is not None and pair.used_at is not None else None)
        matches = await self.kdf.verify(otp, checked.otp_hash if checked else await self._dummy_hash())

        def settle(work: UnitOfWork) -> Bootstrap:
            result = self._settle(work, reserved, pair, matches and checked is not None, now)
            attempt.record(work, result)
            return result

        return await self.store.submit(settle)

    def _settle(
        self, work: UnitOfWork, reserved: StoredPair | None, pair: StoredPair | None, matches: bool, now: datetime
    ) -> Bootstrap:
        conn = work.connection
        if pair is None:
            return Bootstrap(BootstrapOutcome.UNKNOWN_ACCESS_ID)
        if reserved is None:
            # No guess on this pair: spent (400 only with the right OTP), locked or out of guesses, expired.
            if pair.used_at is not None:
                return Bootstrap(BootstrapOutcome.ALREADY_BOOTSTRAPPED if matches else BootstrapOutcome.WRONG_OTP, pair)
            if now >= pair.expires_at and pair.locked_at is None:
                return Bootstrap(BootstrapOutcome.EXPIRED, pair)
            return Bootstrap(BootstrapOutcome.LOCKED, pair)
        if not matches:
            locked = tables.lock_if_out_of_guesses(conn, reserved, now, self.lockout_after)
            return Bootstrap(BootstrapOutcome.LOCKED if locked else BootstrapOutcome.WRONG_OTP, reserved)
        if tables.spend(conn, reserved, now):
            return Bootstrap(BootstrapOutcome.BOOTSTRAPPED, reserved, tables.instance_id(conn, reserved))
        # Spent meanwhile by another attempt with the right OTP (400), or locked meanwhile (401 always).
        current = tables.find_pair(conn, access_id=reserved.access_id)
        if current is not None and current.locked_at is None and current.used_at is not None:
            return Bootstrap(BootstrapOutcome.ALREADY_BOOTSTRAPPED, reserved)
        return Bootstrap(BootstrapOutcome.LOCKED, reserved)

    async def _dummy_hash(self) -> str:
        """A hash of no pair's OTP, at the engine's cost: what a refused guess is checked against."""
        if self._dummy is None:
            self._dummy = await self.kdf.hash(new_otp(), self.kdf_cost)
        return self._dummy


class DeviceAttempt(Protocol):
    """What the device face adds to a bootstrap's units of work: its rate limits and its audit row."""

    def count(self, work: UnitOfWork) -> bool:
        """Count the attempt against its limits; True when it is over one (recorded as the face sees fit)."""

    def record(self, work: UnitOfWork, result: Bootstrap) -> None:
        """Write the attempt's audit row."""


class _Unrecorded:
    """A bootstrap asked of the engine directly (tools, tests): no limits, no audit."""

    def count(self, work: UnitOfWork) -> bool:
        return False

    def record(self, work: UnitOfWork, result: Bootstrap) -> None:
        return None
