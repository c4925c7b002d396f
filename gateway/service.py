"""One regeneration attempt, the same for every face: check, authorise, limit, delegate, audit.

The faces hand over what the caller sent; `RegenerationService.regenerate` turns it into a
`DeviceRef` (or `InvalidInput`), checks the caller's right for that study and mode, counts the
attempt against the device's and the caller's rate limits, asks the backend, and writes one
audit row whatever happened. A refused attempt stops at the first check that fails: a caller
without the right never reaches the rate limiter, the engine or the upstream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from gateway.audit import AuditEvent, AuditTrail, clip
from gateway.domain import (
    DEVICE_ACTIONS_POST,
    Backend,
    Caller,
    Credentials,
    DeviceRef,
    ErrorCode,
    Refusal,
    parse_mode,
)
from gateway.engine.rules import Clock, utc_now
from gateway.limits import Limit, RateLimiter
from gateway.settings import Settings

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Policy:
    """The service's settings."""

    require_principal: bool
    """False only when authentication is switched off (an insecure development setting)."""
    device_limit: Limit
    caller_limit: Limit

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        window = timedelta(seconds=settings.rate_limit_window_seconds)
        return cls(
            require_principal=not settings.insecure_disable_auth,
            device_limit=Limit("device", settings.rate_limit_device, window),
            caller_limit=Limit("caller", settings.rate_limit_caller, window),
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
        outcome = "UNEXPECTED_ERROR"
        ref: DeviceRef | None = None
        try:
            ref = request.parse()
            self._authorize(ref, caller)
            await self._limit(ref, caller)
            credentials = await self.backend.regenerate(ref, caller)
            outcome = "SUCCESS"
            return credentials
        except Refusal as refusal:
            outcome = refusal.code.value
            raise
        finally:
            await self._record(request, ref, caller, outcome)

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

    async def _limit(self, ref: DeviceRef, caller: Caller) -> None:
        device = f"{ref.study_id}/{ref.mode.value}/{ref.inventory_id}"
        who = caller.principal.subject if caller.principal else "anonymous"
        for limit, key in ((self.policy.device_limit, device), (self.policy.caller_limit, who)):
            retry_after = await self.limiter.hit(limit, key)
            if retry_after is not None:
                raise Refusal(ErrorCode.RATE_LIMITED, retry_after_seconds=retry_after)

    async def _record(self, request: DeviceRequest, ref: DeviceRef | None, caller: Caller, outcome: str) -> None:
        principal = caller.principal
        event = AuditEvent(
            at=self.clock(),
            action="regenerate",
            outcome=outcome,
            request_id=caller.request_id,
            caller=clip(principal.subject) if principal else None,
            client_id=clip(principal.client_id) if principal else None,
            study_id=ref.study_id if ref else clip(request.study_id),
            mode=ref.mode.value if ref else clip(request.mode),
            subject_id=ref.subject_id if ref else clip(request.subject_id),
            inventory_id=ref.inventory_id if ref else clip(request.inventory_id),
        )
        try:
            await self.audit.append(event)
        except Exception:
            # The attempt has happened (new credentials may exist): answering it matters more than
            # failing it. The failure is loud, with what the row would have said (no secrets in it).
            log.exception("AUDIT WRITE FAILED (request %s): %s", caller.request_id, event)
