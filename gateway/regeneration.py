"""One regeneration attempt, the same for every face: check, authorise, then one unit of work.

The faces hand over what the caller sent; `RegenerationService.regenerate` turns it into a
`DeviceRef` (or `InvalidInput`) and checks the caller's right for that study and mode. Then the
backend runs the attempt, handed an `Attempt` (the attempt's unit of work): the device's and the
caller's rate-limit counts, what the backend changes and the attempt's audit row commit in one
transaction (the local engine), or the counts and a `PENDING` row commit before an upstream call
and the outcome row after it. A refused attempt stops at the first check that fails: a caller
without the right never reaches the rate limiter, the engine or the upstream; every attempt
leaves exactly one audit row (an upstream one, two).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection

from gateway.audit import PENDING, AuditEvent, AuditTrail, Receipt, clip
from gateway.domain import (
    DEVICE_ACTIONS_POST,
    Backend,
    Caller,
    Change,
    Clock,
    Credentials,
    DeviceRef,
    ErrorCode,
    RateLimited,
    Refusal,
    T,
    parse_mode,
    utc_now,
)
from gateway.rate_limits import Limit, RateLimiter
from gateway.settings import RateLimitSettings
from gateway.store import UnitOfWork

log = logging.getLogger(__name__)

SUCCESS = "SUCCESS"
UNEXPECTED_ERROR = "UNEXPECTED_ERROR"


@dataclass(frozen=True)
class DeviceRequest:
    """What the caller sent, unchecked."""

    study_id: str
    mode: str
    subject_id: str
    inventory_id: str
    m_subject_id: str

    def parse(self) -> DeviceRef:
        """Validate and normalise; raises `InvalidInput` naming the first bad field."""
        return DeviceRef.parse(
            study_id=self.study_id,
            mode=parse_mode(self.mode),
            subject_id=self.subject_id,
            inventory_id=self.inventory_id,
            m_subject_id=self.m_subject_id,
        )

    def event(self, ref: DeviceRef | None, caller: Caller, outcome: str, at_clock: Clock) -> AuditEvent:
        """The audit row of an attempt at this request (input clipped when it did not parse)."""
        principal = caller.principal
        return AuditEvent(
            at=at_clock(),
            action="regenerate",
            outcome=outcome,
            request_id=caller.request_id,
            caller=clip(principal.subject) if principal else None,
            client_id=clip(principal.client_id) if principal else None,
            study_id=ref.study_id if ref else clip(self.study_id),
            mode=ref.mode.value if ref else clip(self.mode),
            subject_id=ref.subject_id if ref else clip(self.subject_id),
            inventory_id=ref.inventory_id if ref else clip(self.inventory_id),
        )


@dataclass(frozen=True)
class Policy:
    """The service's settings."""

    require_principal: bool
    """False only when authentication is switched off (an insecure development setting)."""
    device_limit: Limit
    caller_limit: Limit

    @classmethod
    def from_settings(cls, limits: RateLimitSettings, *, require_principal: bool = True) -> Policy:
        window = timedelta(seconds=limits.window_seconds)
        return cls(
            require_principal=require_principal,
            device_limit=Limit("device", limits.device, window),
            caller_limit=Limit("caller", limits.caller, window),
        )


class RegenerationService:
    def __init__(
        self, backend: Backend, audit: AuditTrail, limiter: RateLimiter, policy: Policy, clock: Clock = utc_now
    ) -> None:
        self.backend = backend
        self.audit = audit
        self.limiter = limiter
        self.policy = policy
        self.clock = clock

    async def regenerate(self, request: DeviceRequest, caller: Caller) -> Credentials:
        ref: DeviceRef | None = None
        try:
            ref = request.parse()
            self._authorize(ref, caller)
        except Refusal as refusal:
            await self._record(request.event(ref, caller, refusal.code.value, self.clock))
            raise
        attempt = RegenerationAttempt(self, request, ref, caller)
        outcome = UNEXPECTED_ERROR
        credentials: Credentials | None = None
        try:
            # Rate limits are the unit of work's: an attempt over a limit is refused there, before
            # anything else it would do, counting nothing. A backend about to do costly work before
            # its unit (the engine's KDF hash) screens the attempt first (`attempt.screen`).
            credentials = await self.backend.regenerate(ref, caller, attempt)
            outcome = SUCCESS
            return credentials
        except Refusal as refusal:
            outcome = refusal.code.value
            raise
        finally:
            if not attempt.settled:
                await self._record(attempt.outcome_event(outcome, credentials))

    def _authorize(self, ref: DeviceRef, caller: Caller) -> None:
        principal = caller.principal
        if principal is None:
            if self.policy.require_principal:
                raise Refusal(ErrorCode.PERMISSION_DENIED)
            return
        if not principal.may(DEVICE_ACTIONS_POST, ref.study_id, ref.mode):
            raise Refusal(
                ErrorCode.PERMISSION_DENIED,
                f"{DEVICE_ACTIONS_POST} is not granted for this study in {ref.mode.value} mode",
            )

    async def _record(self, event: AuditEvent) -> None:
        """An audit row in a unit of its own: an attempt that never reached (or never finished) its unit."""

        def append(work: UnitOfWork) -> None:
            self.audit.append(work, event)

        try:
            await self.audit.store.submit(append)
        except Exception:
            # The attempt has happened (an upstream may have made new credentials): answering it
            # matters more than failing it. The failure is loud, with what the row would have said
            # (less the identifiers; the request id finds them in the access line's request).
            log.exception("AUDIT WRITE FAILED (request %s): %s", event.request_id, event.summary())


class RegenerationAttempt:
    """The service's `Attempt`: rate-limit counts, the backend's change and the audit row, together."""

    def __init__(self, service: RegenerationService, request: DeviceRequest, ref: DeviceRef, caller: Caller) -> None:
        self.service = service
        self.request = request
        self.ref = ref
        self.caller = caller
        self.pending: Receipt | None = None
        """The `PENDING` row, once `begin` committed it."""
        self.settled = False
        """True once the attempt's last audit row is committed."""
        who = caller.principal.subject if caller.principal else "anonymous"
        policy = service.policy
        self.limits = (
            # Case folded: spelling variants of one inventory ID share one budget (see the README).
            (policy.device_limit, f"{ref.study_id}/{ref.mode.value}/{ref.inventory_id.upper()}"),
            (policy.caller_limit, who),
        )

    def _event(self, outcome: str) -> AuditEvent:
        return self.request.event(self.ref, self.caller, outcome, self.service.clock)

    def outcome_event(self, outcome: str, credentials: Credentials | None) -> AuditEvent:
        """The row that settles the attempt (after `begin`: pointing back to its `PENDING` row)."""
        return replace(
            self._event(outcome),
            access_id=credentials.access_id if credentials else None,
            attempt_seq=self.pending.seq if self.pending else None,
        )

    async def screen(self, change: Change[None]) -> None:
        """One unit of work before work that costs (the engine's KDF hash when no OTP is ready): an
        attempt over a limit is refused counting nothing; one `change` refuses is counted and its
        refusal recorded, as `commit` does; otherwise nothing is written or counted (the attempt's
        own unit counts it later)."""
        audit = self.service.audit

        def unit(work: UnitOfWork) -> Refusal | None:
            refusal: Refusal | None = self._over_limit(work.connection)
            if refusal is None:
                try:
                    change(work)
                except Refusal as refused:
                    refusal = self._hit(work.connection) or refused
                else:
                    return None
            audit.append(work, self._event(refusal.code.value))
            return refusal

        refusal = await audit.store.submit(unit)
        if refusal is not None:
            self.settled = True
            raise refusal

    async def commit(self, change: Change[T]) -> T:
        value, _ = await self._commit(change, SUCCESS)
        self.settled = True
        return value

    async def begin(self) -> None:
        _, self.pending = await self._commit(_nothing, PENDING)

    async def _commit(self, change: Change[T], outcome: str) -> tuple[T, Receipt]:
        audit = self.service.audit

        def unit(work: UnitOfWork) -> tuple[T, Receipt] | Refusal:
            refusal: Refusal | None = self._count(work.connection)
            if refusal is None:
                try:
                    value = change(work)
                except Refusal as refused:
                    refusal = refused
            if refusal is not None:
                audit.append(work, self._event(refusal.code.value))
                return refusal
            return value, audit.append(work, replace(self._event(outcome), access_id=_access_id(value)))

        answer = await audit.store.submit(unit)
        if isinstance(answer, Refusal):
            self.settled = True
            raise answer
        return answer

    def _count(self, conn: Connection) -> RateLimited | None:
        """Count the attempt against its limits, in its unit of work. An attempt already over one is
        refused counting nothing: a caller over its own limit spends no device's budget."""
        return self._over_limit(conn) or self._hit(conn)

    def _over_limit(self, conn: Connection) -> RateLimited | None:
        """`RateLimited` if counting the attempt now would pass a limit; counts nothing."""
        retry_after = self.service.limiter.peek(conn, self.limits)
        return None if retry_after is None else RateLimited(retry_after)

    def _hit(self, conn: Connection) -> RateLimited | None:
        """Count the attempt against each of its limits."""
        for limit, key in self.limits:
            exceeded = self.service.limiter.hit(conn, limit, key)
            if exceeded is not None:
                return RateLimited(exceeded.retry_after)
        return None


def _nothing(work: UnitOfWork) -> None:
    return None


def _access_id(credentials: Any) -> str | None:
    return credentials.access_id if isinstance(credentials, Credentials) else None
