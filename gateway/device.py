"""The device side of the flow, for the local engine: `POST /api/deviceBootstrap`.

Like the mHealth Connector's endpoint: HTTP Basic with user = accessId and password = OTP.
200 with the device's connection parameters; 401 for an unknown, wrong, expired or locked pair
(the same answer for all four, and in the same time: every refusal checks the OTP with the KDF,
against a dummy hash when there is no pair to check, so the endpoint tells a guesser nothing);
400 when the OTP was right but already spent; 429 with `Retry-After` when the caller's address or
the access ID is over its rate limit (`GATEWAY_BOOTSTRAP_RATE_LIMIT_*`). The endpoint needs no
token, by design, so its limits keep a flood from costing KDF time and from growing the audit
trail: every attempt within the limits is audited (in the same unit of work as what it changed),
a flood only by its first refused attempt per key and window. The OTP never is.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass, field
from datetime import timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.audit import AuditEvent, AuditTrail, clip
from gateway.engine.engine import Bootstrap, BootstrapOutcome, CredentialEngine
from gateway.metrics import observe_request
from gateway.rate_limits import Limit, RateLimiter
from gateway.settings import RateLimitSettings
from gateway.state import state_of
from gateway.store import UnitOfWork

_CHALLENGE = {"WWW-Authenticate": 'Basic realm="deviceBootstrap", charset="UTF-8"', "Cache-Control": "no-store"}
_NO_STORE = {"Cache-Control": "no-store"}


@dataclass(frozen=True)
class DeviceBootstrap:
    """The endpoint's collaborators: the engine that spends pairs, the trail, the limiter and its limits."""

    engine: CredentialEngine
    audit: AuditTrail
    limiter: RateLimiter
    per_client: Limit
    per_access_id: Limit

    @classmethod
    def from_settings(cls, limits: RateLimitSettings, engine: CredentialEngine, audit: AuditTrail) -> DeviceBootstrap:
        window = timedelta(seconds=limits.bootstrap_window_seconds)
        return cls(
            engine,
            audit,
            RateLimiter(audit.store, engine.clock),
            per_client=Limit("bootstrap-client", limits.bootstrap_client, window),
            per_access_id=Limit("bootstrap-access-id", limits.bootstrap_access_id, window),
        )


@dataclass
class _Attempt:
    """One device's attempt: counted against both limits and audited in the engine's units of work."""

    device: DeviceBootstrap
    client: str
    access_id: str
    request_id: str
    retry_after: int = field(default=0)

    def count(self, work: UnitOfWork) -> bool:
        for limit, key in ((self.device.per_client, self.client), (self.device.per_access_id, self.access_id)):
            exceeded = self.device.limiter.hit(work.connection, limit, key)
            if exceeded is not None:
                self.retry_after = exceeded.retry_after
                if exceeded.first:  # a flood leaves one row per key and window, not one per request
                    self.record(work, Bootstrap(BootstrapOutcome.RATE_LIMITED))
                return True
        return False

    def record(self, work: UnitOfWork, result: Bootstrap) -> None:
        pair = result.pair
        event = AuditEvent(
            at=self.device.engine.clock(),
            action="bootstrap",
            outcome=result.outcome.value,
            request_id=self.request_id,
            caller=f"device:{clip(self.access_id)}",
            study_id=pair.study_id if pair else None,
            mode=pair.mode.value if pair else None,
            inventory_id=pair.inventory_id if pair else None,
            access_id=clip(self.access_id),
        )
        self.device.audit.append(work, event)


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    access_id, colon, otp = decoded.partition(":")
    if not colon or not access_id or len(access_id) > 64 or len(otp) > 64:
        return None
    return access_id, otp


async def device_bootstrap(request: Request) -> JSONResponse:
    started = time.perf_counter()
    response = await _bootstrap(request)
    if response.status_code != 404:  # upstream mode: no endpoint, nothing to count
        observe_request("device", str(response.status_code), time.perf_counter() - started)
    return response


async def _bootstrap(request: Request) -> JSONResponse:
    device = state_of(request)["device"]
    if device is None:
        # Upstream mode: devices bootstrap against mHealth itself, not through the gateway.
        return JSONResponse({"error": "Not found"}, 404)
    credentials = _basic_credentials(request.headers.get("authorization"))
    if credentials is None:
        return JSONResponse({"error": "HTTP Basic credentials (accessId:OTP) are required"}, 401, _CHALLENGE)
    access_id, otp = credentials
    client = request.client.host if request.client else "unknown"
    attempt = _Attempt(device, client, access_id, request.state.request_id)
    result = await device.engine.bootstrap(access_id, otp, attempt)
    pair = result.pair
    if result.outcome is BootstrapOutcome.BOOTSTRAPPED:
        assert pair is not None
        return JSONResponse(
            {
                "deviceId": result.instance_id,
                "studyId": pair.study_id,
                "mode": pair.mode.value,
                "inventoryId": pair.inventory_id,
            },
            headers=_NO_STORE,
        )
    if result.outcome is BootstrapOutcome.ALREADY_BOOTSTRAPPED:
        return JSONResponse({"error": "The device is already bootstrapped"}, 400, _NO_STORE)
    if result.outcome is BootstrapOutcome.RATE_LIMITED:
        headers = {**_NO_STORE, "Retry-After": str(attempt.retry_after)}
        return JSONResponse({"error": "Too many attempts: try again later"}, 429, headers)
    return JSONResponse({"error": "Invalid access ID or OTP"}, 401, _CHALLENGE)


routes = [Route("/api/deviceBootstrap", device_bootstrap, methods=["POST"])]
