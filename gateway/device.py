"""The device side of the flow, for the local engine: `POST /api/deviceBootstrap`.

Like the mHealth Connector's endpoint: HTTP Basic with user = accessId and password = OTP.
200 with the device's connection parameters; 401 for an unknown, wrong, expired or locked pair
(the same answer for all four, so the endpoint tells a guesser nothing); 400 when the OTP was
right but already spent. Every attempt is audited, in the same unit of work as what it changed;
the OTP never is.
"""

from __future__ import annotations

import base64
import binascii

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.audit import AuditEvent, clip
from gateway.engine.engine import Bootstrap, BootstrapOutcome
from gateway.state import state_of
from gateway.store import UnitOfWork

_CHALLENGE = {"WWW-Authenticate": 'Basic realm="deviceBootstrap", charset="UTF-8"', "Cache-Control": "no-store"}


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
    state = state_of(request)
    engine = state["engine"]
    if engine is None:
        # Upstream mode: devices bootstrap against mHealth itself, not through the gateway.
        return JSONResponse({"error": "Not found"}, 404)
    audit = state["audit"]
    credentials = _basic_credentials(request.headers.get("authorization"))
    if credentials is None:
        return JSONResponse({"error": "HTTP Basic credentials (accessId:OTP) are required"}, 401, _CHALLENGE)
    access_id, otp = credentials
    request_id: str = request.state.request_id

    def record(work: UnitOfWork, result: Bootstrap) -> None:
        pair = result.pair
        event = AuditEvent(
            at=engine.clock(),
            action="bootstrap",
            outcome=result.outcome.value,
            request_id=request_id,
            caller=f"device:{clip(access_id)}",
            study_id=pair.study_id if pair else None,
            mode=pair.mode.value if pair else None,
            inventory_id=pair.inventory_id if pair else None,
            access_id=clip(access_id),
        )
        audit.append(work, event)

    result = await engine.bootstrap(access_id, otp, record)
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
            headers={"Cache-Control": "no-store"},
        )
    if result.outcome is BootstrapOutcome.ALREADY_BOOTSTRAPPED:
        return JSONResponse({"error": "The device is already bootstrapped"}, 400, {"Cache-Control": "no-store"})
    return JSONResponse({"error": "Invalid access ID or OTP"}, 401, _CHALLENGE)


routes = [Route("/api/deviceBootstrap", device_bootstrap, methods=["POST"])]
