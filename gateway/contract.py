"""The upstream's wire contract, in one place: the access-code path, the success body and `ORSResponse`.

Clinical One's access-code PUT answers a bare `BootStrapCredResponseDto` on 200 (other Clinical One
services wrap results in an `ORSResponse`, so both are read), and an `ORSResponse` whose
`errorData` says what went wrong otherwise. Both directions live here:

- written: the REST face answers with `credentials_body` and `refusal_body`; the tests' upstream
  doubles answer with `credentials_body`, `wrapped` and `error_body`;
- read: `gateway.upstream.answers` decodes an upstream body with `decode` and reads it with
  `read_success` and `read_error`, which only say what the body holds; what it *means* (a cause,
  an upstream failure) is the answer reader's to decide.

Nothing else in the gateway spells out a key of these bodies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TypedDict, TypeGuard

from gateway.domain import Credentials, InvalidInput, RateLimited, Refusal

ACCESS_CODE_PATH = (
    "/ec-ors-svc/rest/v1.0/studies/{studyId}/{mode}/subjects/{subjectId}/devices/{inventoryId}/access-code"
)
"""The PUT's path template: the REST face serves it, the upstream client fills it in."""


class BootStrapCredResponseDto(TypedDict):
    """The 200 body: the new access ID, the device instance id and the one-time password."""

    accessId: str
    id: str
    otp: str


class ErrorResponseData(TypedDict):
    """`ORSResponse.errorData`. `details` is an object on some pages and a plain string on others."""

    errorCode: str | None
    errorMessage: str | None
    details: object


class ORSResponse(TypedDict):
    """Clinical One's common response object; `status` is `Success` / `failure` in any case."""

    status: str
    result: BootStrapCredResponseDto | None
    version: int
    errorData: ErrorResponseData | None


# ---------------------------------------------------------------------------------------------
# Written: by the REST face, and by the tests' stand-ins for the upstream.


def credentials_body(credentials: Credentials) -> BootStrapCredResponseDto:
    """The bare 200 body for new credentials, as the reference documents it."""
    return {"accessId": credentials.access_id, "id": credentials.device_id, "otp": credentials.otp}


def wrapped(dto: BootStrapCredResponseDto, status: str = "Success") -> ORSResponse:
    """A success as other Clinical One services send it: the DTO as an `ORSResponse`'s `result`."""
    return {"status": status, "result": dto, "version": 1, "errorData": None}


def error_body(code: str | None, message: str | None, details: object = None) -> ORSResponse:
    """An error `ORSResponse`, as the reference describes it."""
    return {
        "status": "failure",
        "result": None,
        "version": 1,
        "errorData": {"errorCode": code, "errorMessage": message, "details": details},
    }


def refusal_body(refusal: Refusal) -> ORSResponse:
    """The `ORSResponse` for a refusal: the cause's REST errorCode and documented prose.

    Invalid input names the field (its message is the field's own, never the value); a rate
    limit says when to come back; every other cause has no details.
    """
    cause = refusal.cause
    match refusal:
        case InvalidInput(field=field, message=message):
            return error_body(cause.rest_code, message, {"field": field, "reason": message})
        case RateLimited(retry_after_seconds=seconds):
            return error_body(cause.rest_code, cause.message, {"retryAfterSeconds": seconds})
        case _:
            return error_body(cause.rest_code, cause.message)


# ---------------------------------------------------------------------------------------------
# Read: an upstream's answer, leniently; recognising what it means is `gateway.upstream.answers`'s job.


def decode(body: bytes) -> object:
    """The JSON document of a body; `ValueError` when it is not JSON (or nested beyond reading)."""
    try:
        document: object = json.loads(body)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    return document


@dataclass(frozen=True)
class ErrorReading:
    """What an error body says, whatever its shape: the `ORSResponse`, its `errorData` alone, or neither."""

    code: str | None
    """`errorCode` as text (a string, or a number, on the wire); None when absent or of another type."""
    texts: tuple[str, ...]
    """Where the documented prose may stand, in order: `errorMessage`, `message`, then `details`
    (a string, or an object's string values)."""
    retry_after_seconds: int | None
    """`details.retryAfterSeconds` when it is a whole number ≥ 0 (the REST face sends it with a 429)."""


def read_error(document: object) -> ErrorReading:
    """What an error body says; a body that is not an object says nothing."""
    body = document if isinstance(document, dict) else {}
    error_data = body.get("errorData")
    data: dict[str, object] = error_data if isinstance(error_data, dict) else body
    code = data.get("errorCode")
    details = data.get("details")
    texts = [data.get("errorMessage"), data.get("message")]
    texts.extend(details.values() if isinstance(details, dict) else [details])
    seconds = details.get("retryAfterSeconds") if isinstance(details, dict) else None
    return ErrorReading(
        code=str(code) if _is_int(code) or isinstance(code, str) else None,
        texts=tuple(text for text in texts if isinstance(text, str)),
        retry_after_seconds=seconds if _is_int(seconds) and seconds >= 0 else None,
    )


def read_success(document: dict[str, object]) -> BootStrapCredResponseDto | ErrorReading:
    """The DTO a 2xx body holds, bare or as an `ORSResponse`'s `result`; its error when the envelope says failure.

    Each field is trimmed; one that is absent, empty or not a string reads as "" (the caller decides).
    """
    status = document.get("status")
    if isinstance(status, str) and status.strip().casefold() not in ("", "success"):
        return read_error(document)
    result = document.get("result")
    payload: dict[str, object] = result if isinstance(result, dict) else document
    return {"accessId": _text(payload, "accessId"), "id": _text(payload, "id"), "otp": _text(payload, "otp")}


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(payload: dict[str, object], name: str) -> str:
    value = payload.get(name)
    return value.strip() if isinstance(value, str) else ""
