"""`CredentialEngine`: the `Backend` that issues credentials itself, from the registry in its store.

A regeneration reads the facts and judges them (no lock, no write): a refusal is committed at once,
in the attempt's unit of work, with no OTP hash spent. Otherwise the slow OTP hash is computed off
the event loop, and the attempt's unit of work judges again with the device row locked and writes
the new pair, so the pair it stores was issued against facts that still hold.

A bootstrap (the device side) spends a pair once: its outcome and its audit row commit together.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from gateway.domain import Attempt, Caller, Clock, Credentials, DeviceRef, ErrorCode, Readiness, Refusal, utc_now
from gateway.engine import tables
from gateway.engine.otp import KdfPool, new_access_id, new_otp
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


@dataclass(frozen=True)
class Bootstrap:
    outcome: BootstrapOutcome
    pair: StoredPair | None = None
    instance_id: str | None = None


Record = Callable[[UnitOfWork, Bootstrap], None]
"""Writes a bootstrap's audit row in its unit of work."""


def _nothing(work: UnitOfWork, result: Bootstrap) -> None:
    return None


class _Unaudited:
    """The `Attempt` of a regeneration asked of the engine directly (tools, tests): no limits, no audit."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def commit(self, change: Callable[[UnitOfWork], Credentials]) -> Credentials:
        return await self.store.submit(change)

    async def begin(self) -> None:
        return None


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
        clock: Clock = utc_now,
    ) -> None:
        self.store = store
        self.kdf = kdf or KdfPool(os.cpu_count() or 1)
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
        refusal = judge(ref, await self.store.read(lambda conn: tables.facts(conn, ref)))
        if refusal is not None:
            await attempt.commit(_refuse(refusal))

        otp = new_otp()
        otp_hash = await self.kdf.hash(otp, self.kdf_cost)

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
                work.connection, ref, access_id=access_id, otp_hash=otp_hash, issued_at=issued_at, expires_at=expires_at
            )
            return Credentials(access_id=access_id, otp=otp, device_id=facts.device.instance_id, expires_at=expires_at)

        for _ in range(self._ACCESS_ID_ATTEMPTS):
            try:
                return await attempt.commit(issue)
            except IntegrityError:
                # Another process took this access id at the same moment: nothing was committed; draw again.
                continue
        raise Refusal(ErrorCode.INTERNAL_SERVER_ERROR)

    async def readiness(self) -> Readiness:
        reachable = await self.store.ping()
        return Readiness(reachable, {"store": "reachable" if reachable else "unreachable"})

    async def verify(self, access_id: str, otp: str) -> bool:
        """True when (access_id, otp) is a device's current pair, unexpired, unused and unlocked.

        Spends nothing and counts nothing: a check for tests and tools, not for devices.
        """
        pair = await self.store.read(lambda conn: tables.find_pair(conn, access_id))
        if pair is None or pair.used_at or pair.locked_at or self.clock() >= pair.expires_at:
            return False
        return await self.kdf.verify(otp, pair.otp_hash)

    async def bootstrap(self, access_id: str, otp: str, record: Record = _nothing) -> Bootstrap:
        """The device side: spend (access_id, otp) once, counting wrong OTPs toward a lockout.

        Checks, in order: the access id is a current pair; the pair is not locked; not expired;
        the OTP matches (else one more failure, and a lock at `lockout_after`); not yet used.
        The outcome's writes and `record` (its audit row) commit in one unit of work.
        """
        pair = await self.store.read(lambda conn: tables.find_pair(conn, access_id))
        now = self.clock()
        matches = pair is not None and await self.kdf.verify(otp, pair.otp_hash)

        def settle(work: UnitOfWork) -> Bootstrap:
            result = self._settle(work, pair, matches, now)
            record(work, result)
            return result

        return await self.store.submit(settle)

    def _settle(self, work: UnitOfWork, pair: StoredPair | None, matches: bool, now: datetime) -> Bootstrap:
        conn = work.connection
        if pair is None:
            return Bootstrap(BootstrapOutcome.UNKNOWN_ACCESS_ID)
        if pair.locked_at is not None:
            return Bootstrap(BootstrapOutcome.LOCKED, pair)
        if now >= pair.expires_at:
            return Bootstrap(BootstrapOutcome.EXPIRED, pair)
        if not matches:
            locked = tables.record_failure(conn, pair, now, self.lockout_after)
            return Bootstrap(BootstrapOutcome.LOCKED if locked else BootstrapOutcome.WRONG_OTP, pair)
        if pair.used_at is not None or not tables.mark_used(conn, pair, now):
            # Spent before (or by another attempt, or the lock fell, between our read and our write).
            return Bootstrap(BootstrapOutcome.ALREADY_BOOTSTRAPPED, pair)
        return Bootstrap(BootstrapOutcome.BOOTSTRAPPED, pair, tables.instance_id(conn, pair))


def _refuse(code: ErrorCode) -> Callable[[UnitOfWork], Credentials]:
    def refuse(work: UnitOfWork) -> Credentials:
        raise Refusal(code)

    return refuse
