"""The local credential engine: the service's rules, in order, over the store.

`judge` is the rule book (pure: facts in, a refusal or nothing out). `CredentialEngine` runs it
twice around the slow OTP hash: once to refuse early without hashing, and once more inside the
write transaction with the device row locked, so the pair it stores was issued against facts
that still hold.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from gateway.domain import Caller, Credentials, DeviceRef, ErrorCode, Refusal
from gateway.engine import codes
from gateway.engine.registry import ConnectionType
from gateway.engine.store import DeviceFacts, Store, StoredPair

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def judge(ref: DeviceRef, facts: DeviceFacts) -> ErrorCode | None:
    """The first rule that fails decides; None means a new pair may be issued.

    1. study unknown, or not available in that mode          → STUDY_NOT_FOUND
    2. the study's mHealth settings missing for that mode     → MHEALTH_SETTINGS_NOT_FOUND
    3. subject unknown there, or mSubjectId not the subject's → INVALID_SUBJECT
    4. device unknown in the study and mode                   → INVALID_DEVICE
    5. device not registered with mHealth                     → DEVICE_NOT_REGISTERED
    6. dispensed to nobody                                    → DEVICE_NOT_DISPENSED
       dispensed to another subject                           → DEVICE_DISPENSED_TO_ANOTHER_SUBJECT
    7. no connection type                                     → MISSING_CONNECTION_TYPE
       NO_CONNECTION                                          → NO_CONNECTION_DEVICE
       CLOUD_TO_CLOUD without a vendor code                   → MISSING_VENDOR_CODE
    """
    if not facts.study_mode_known:
        return ErrorCode.STUDY_NOT_FOUND
    if not facts.mhealth_configured:
        return ErrorCode.MHEALTH_SETTINGS_NOT_FOUND
    if facts.subject_m_subject_id is None or facts.subject_m_subject_id != ref.m_subject_id:
        return ErrorCode.INVALID_SUBJECT
    device = facts.device
    if device is None:
        return ErrorCode.INVALID_DEVICE
    if not device.registered:
        return ErrorCode.DEVICE_NOT_REGISTERED
    if device.dispensed_to is None:
        return ErrorCode.DEVICE_NOT_DISPENSED
    if device.dispensed_to != ref.subject_id:
        return ErrorCode.DEVICE_DISPENSED_TO_ANOTHER_SUBJECT
    if device.connection_type is None:
        return ErrorCode.MISSING_CONNECTION_TYPE
    if device.connection_type is ConnectionType.NO_CONNECTION:
        return ErrorCode.NO_CONNECTION_DEVICE
    if device.connection_type is ConnectionType.CLOUD_TO_CLOUD and not device.vendor_code:
        return ErrorCode.MISSING_VENDOR_CODE
    return None


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
        clock: Clock = utc_now,
    ) -> None:
        self.store = store
        self.lockout_after = lockout_after
        self.otp_ttl = otp_ttl
        self.kdf_cost = kdf_cost
        self.clock = clock

    async def regenerate(self, ref: DeviceRef, caller: Caller) -> Credentials:
        try:
            return await self._regenerate(ref)
        except SQLAlchemyError:
            # The store failed: log the cause with the request id, answer the documented 500.
            log.exception("store failure while regenerating (request %s)", caller.request_id)
            raise Refusal(ErrorCode.INTERNAL_SERVER_ERROR) from None

    async def _regenerate(self, ref: DeviceRef) -> Credentials:
        async with self.store.transaction() as tx:
            refusal = judge(ref, await tx.facts(ref))
        if refusal is not None:
            raise Refusal(refusal)

        otp = codes.new_otp()
        otp_hash = await codes.hash_otp_async(otp, self.kdf_cost)
        for _ in range(self._ACCESS_ID_ATTEMPTS):
            access_id = codes.new_access_id()
            issued_at = self.clock()
            expires_at = issued_at + self.otp_ttl
            try:
                async with self.store.transaction() as tx:
                    facts = await tx.facts(ref, lock=True)
                    refusal = judge(ref, facts)
                    if refusal is not None:
                        raise Refusal(refusal)
                    await tx.replace_pair(
                        ref, access_id=access_id, otp_hash=otp_hash, issued_at=issued_at, expires_at=expires_at
                    )
            except IntegrityError:
                # Another process took this access id, or inserted this device's first pair at the
                # same moment: draw again; the retry finds the row and replaces it.
                continue
            assert facts.device is not None
            return Credentials(access_id=access_id, otp=otp, device_id=facts.device.instance_id, expires_at=expires_at)
        raise Refusal(ErrorCode.INTERNAL_SERVER_ERROR)

    async def verify(self, access_id: str, otp: str) -> bool:
        """True when (access_id, otp) is a device's current pair, unexpired, unused and unlocked.

        Spends nothing and counts nothing: a check for tests and tools, not for devices.
        """
        async with self.store.transaction() as tx:
            pair = await tx.pair(access_id)
        if pair is None or pair.used_at or pair.locked_at or self.clock() >= pair.expires_at:
            return False
        return await codes.verify_otp_async(otp, pair.otp_hash)

    async def bootstrap(self, access_id: str, otp: str) -> Bootstrap:
        """The device side: spend (access_id, otp) once, counting wrong OTPs toward a lockout.

        Checks, in order: the access id is a current pair; the pair is not locked; not expired;
        the OTP matches (else one more failure, and a lock at `lockout_after`); not yet used.
        """
        async with self.store.transaction() as tx:
            pair = await tx.pair(access_id)
        if pair is None:
            return Bootstrap(BootstrapOutcome.UNKNOWN_ACCESS_ID)
        now = self.clock()
        if pair.locked_at is not None:
            return Bootstrap(BootstrapOutcome.LOCKED, pair)
        if now >= pair.expires_at:
            return Bootstrap(BootstrapOutcome.EXPIRED, pair)
        if not await codes.verify_otp_async(otp, pair.otp_hash):
            async with self.store.transaction() as tx:
                locked = await tx.record_failure(pair, now, self.lockout_after)
            return Bootstrap(BootstrapOutcome.LOCKED if locked else BootstrapOutcome.WRONG_OTP, pair)
        if pair.used_at is not None:
            return Bootstrap(BootstrapOutcome.ALREADY_BOOTSTRAPPED, pair)
        async with self.store.transaction() as tx:
            spent = await tx.mark_used(pair, now)
            instance_id = await tx.instance_id(pair) if spent else None
        if not spent:
            # Another attempt spent it (or the lock fell) between our read and our write.
            return Bootstrap(BootstrapOutcome.ALREADY_BOOTSTRAPPED, pair)
        return Bootstrap(BootstrapOutcome.BOOTSTRAPPED, pair, instance_id)
