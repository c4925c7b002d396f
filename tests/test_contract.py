"""The wire contract both ways: what the REST face writes, the upstream client reads as the same answer.

A gateway in upstream mode may sit in front of another gateway's REST face, so the bodies
`gateway.contract` builds from a refusal must be recognised by `gateway.upstream.answers` as
that refusal, facts included.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from gateway import contract
from gateway.domain import CAUSES, Cause, Credentials, ErrorCode, InvalidInput, RateLimited, Refusal
from gateway.upstream.answers import Answer, read_answer

NOW = datetime(2026, 3, 1, 9, 30, 0, tzinfo=UTC)


def read_back(status: int, body: object) -> Refusal:
    with pytest.raises(Refusal) as caught:
        read_answer(Answer(status, httpx.Headers(), json.dumps(body).encode()), now=NOW)
    return caught.value


@pytest.mark.parametrize(
    "cause", [cause for cause in CAUSES.values() if cause.documented], ids=lambda cause: cause.code.value
)
def test_every_documented_refusal_reads_back_as_itself(cause: Cause) -> None:
    body = contract.refusal_body(Refusal(cause.code))
    assert read_back(cause.http_status, body).code is cause.code


def test_a_rate_limit_reads_back_with_its_seconds_from_the_body_alone() -> None:
    refusal = read_back(429, contract.refusal_body(RateLimited(42)))
    assert isinstance(refusal, RateLimited)
    assert refusal.retry_after_seconds == 42


def test_invalid_input_names_its_field_in_the_body() -> None:
    body = contract.refusal_body(InvalidInput("studyId", "must be a GUID"))
    assert body["errorData"] == {
        "errorCode": CAUSES[ErrorCode.INVALID_INPUT].rest_code,
        "errorMessage": "studyId: must be a GUID",
        "details": {"field": "studyId", "reason": "studyId: must be a GUID"},
    }


@pytest.mark.parametrize("wrap", [False, True], ids=["bare", "wrapped"])
def test_credentials_read_back_bare_or_wrapped(wrap: bool) -> None:
    credentials = Credentials(
        access_id="TEST01", otp="TESTOTP8", device_id="B1B8327AFAA6412287106192AB5984EF", expires_at=None
    )
    dto = contract.credentials_body(credentials)
    body = contract.wrapped(dto) if wrap else dto
    assert read_answer(Answer(200, httpx.Headers(), json.dumps(body).encode()), now=NOW) == credentials
