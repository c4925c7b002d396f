"""Reading upstream answers: every documented cause recognised from the cause table, by code or prose.

These tests call `read_answer` on answers built in memory; the same readings over real sockets
are in test_upstream_faults.py. One odd response is shaped with `httpx.MockTransport`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from gateway.domain import (
    CAUSES,
    Caller,
    Cause,
    DeviceRef,
    ErrorCode,
    RateLimited,
    Refusal,
    StudyMode,
    UnrecognizedUpstream,
    UpstreamFailure,
)
from gateway.upstream import UpstreamClient
from gateway.upstream.answers import (
    DEFAULT_RETRY_AFTER_SECONDS,
    MAX_RETRY_AFTER_SECONDS,
    Answer,
    parse_retry_after,
    read_answer,
    recognise,
)
from tests.demo import READY_DEVICE, STUDY, SUBJECT
from tests.upstream_servers import FAKE_OTP, credentials_body, ors_error, upstream_settings

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 3, 1, 9, 30, 0, tzinfo=UTC)
DOCUMENTED = [cause for cause in CAUSES.values() if cause.documented]
GATEWAY_OWN = [cause for cause in CAUSES.values() if not cause.documented]


def read(status: int, body: Any, headers: dict[str, str] | None = None) -> Refusal:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(Refusal) as caught:
        read_answer(Answer(status, httpx.Headers(headers or {}), raw), now=NOW)
    return caught.value


def cause_id(cause: Cause) -> str:
    return cause.code.value.lower()


def test_every_documented_cause_but_the_404_is_read_from_its_body() -> None:
    # 404 is decided by its status alone; every other documented cause needs recognising.
    assert {cause.http_status for cause in DOCUMENTED} == {400, 404, 500}


@pytest.mark.parametrize("cause", [c for c in DOCUMENTED if c.http_status != 404], ids=cause_id)
def test_recognised_by_the_tables_code_whatever_the_message(cause: Cause) -> None:
    assert read(cause.http_status, ors_error(cause.rest_code.lower(), "Bad request")).code is cause.code


@pytest.mark.parametrize("cause", [c for c in DOCUMENTED if c.http_status != 404], ids=cause_id)
@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(lambda prose: prose, id="verbatim"),
        pytest.param(lambda prose: prose.upper() + ".", id="upper-case-with-full-stop"),
        pytest.param(lambda prose: f"Error: {prose.lower()}!", id="surrounded"),
        pytest.param(lambda prose: prose.replace(" ", "  ").replace("-", " "), id="spacing-and-hyphens"),
        pytest.param(lambda prose: f"Request rejected ({prose}) for device X", id="in-a-sentence"),
    ],
)
def test_recognised_by_the_tables_prose_when_the_code_is_unknown(cause: Cause, variant: Any) -> None:
    assert read(cause.http_status, ors_error("C1-003", variant(cause.message))).code is cause.code


@pytest.mark.parametrize("cause", [c for c in DOCUMENTED if c.http_status != 404], ids=cause_id)
def test_prose_in_details_as_a_string_or_an_object(cause: Cause) -> None:
    assert read(cause.http_status, ors_error(None, "Bad request", cause.message)).code is cause.code
    details = {"field": "inventoryId", "reason": cause.message}
    assert read(cause.http_status, ors_error(None, "Bad request", details)).code is cause.code


def test_the_more_specific_prose_wins() -> None:
    body = ors_error(None, "Internal server error: mHealth settings are not found")
    assert read(500, body).code is ErrorCode.MHEALTH_SETTINGS_NOT_FOUND


def test_a_known_code_under_another_status_is_not_that_cause() -> None:
    refusal = read(500, ors_error(CAUSES[ErrorCode.INVALID_SUBJECT].rest_code, "Invalid subject ID"))
    assert refusal.code is ErrorCode.UNRECOGNIZED_UPSTREAM_ERROR
    assert isinstance(refusal, UnrecognizedUpstream)
    assert refusal.upstream_status == 500


@pytest.mark.parametrize("cause", GATEWAY_OWN, ids=cause_id)
def test_the_gateways_own_causes_are_not_upstream_prose(cause: Cause) -> None:
    assert recognise(400, cause.rest_code, [cause.message]) is None


def test_an_error_without_an_envelope_is_read_too() -> None:
    assert read(400, {"errorCode": "X", "errorMessage": "invalid device id"}).code is ErrorCode.INVALID_DEVICE


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param(ors_error("C1-999", "Quarantined device"), "C1-999", id="unknown-code"),
        pytest.param(ors_error(None, None), None, id="nothing"),
        pytest.param({"message": "nope"}, None, id="not-an-ors-response"),
        pytest.param(["a", "list"], None, id="a-list"),
        pytest.param(ors_error("<script>alert(1)</script>", "x"), None, id="code-not-code-shaped"),
        pytest.param(ors_error(4001, "x"), "4001", id="numeric-code"),
    ],
)
def test_anything_else_is_unrecognized_with_status_and_code(body: Any, code: str | None) -> None:
    refusal = read(400, body)
    assert refusal.code is ErrorCode.UNRECOGNIZED_UPSTREAM_ERROR
    assert isinstance(refusal, UnrecognizedUpstream)
    assert (refusal.upstream_status, refusal.upstream_code) == (400, code)
    assert refusal.message == CAUSES[ErrorCode.UNRECOGNIZED_UPSTREAM_ERROR].message


@pytest.mark.parametrize("status", ["failure", "FAILURE", "Failure"])
def test_a_200_whose_envelope_says_failure_is_read_as_an_error(status: str) -> None:
    body = {"status": status, "result": None, "errorData": {"errorCode": "X", "errorMessage": "Invalid device ID"}}
    assert read(200, body).code is ErrorCode.INVALID_DEVICE
    unknown = read(200, {"status": status, "errorData": {"errorCode": "X-1", "errorMessage": "?"}})
    assert isinstance(unknown, UnrecognizedUpstream)
    assert (unknown.code, unknown.upstream_status, unknown.upstream_code) == (
        ErrorCode.UNRECOGNIZED_UPSTREAM_ERROR,
        200,
        "X-1",
    )


def test_whitespace_around_credentials_is_trimmed() -> None:
    body = {"accessId": " TEST01 ", "id": "B1B8327AFAA6412287106192AB5984EF", "otp": f"{FAKE_OTP}\n"}
    credentials = read_answer(Answer(200, httpx.Headers(), json.dumps(body).encode()), now=NOW)
    assert (credentials.access_id, credentials.otp) == ("TEST01", FAKE_OTP)
    assert FAKE_OTP not in repr(credentials)


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>Bad Gateway</html>", b'{"accessId": "TE', b"\xff\xfe", b"[" * 100_000],
    ids=["empty", "html", "truncated", "not-utf8", "deeply-nested"],
)
@pytest.mark.parametrize("status", [200, 400, 500])
def test_unreadable_bodies_are_upstream_failures(body: bytes, status: int) -> None:
    refusal = read(status, body)
    assert isinstance(refusal, UpstreamFailure)
    assert refusal.code is ErrorCode.UPSTREAM_UNAVAILABLE


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7),
        (" 0 ", 0),
        ("Sun, 01 Mar 2026 09:32:00 GMT", 120),
        ("Sun, 01 Mar 2026 09:29:00 GMT", 0),  # in the past: now
        ("Sunday, 01-Mar-26 09:30:30 GMT", 30),  # RFC 850, still legal to receive
        ("Sun Mar  1 09:30:10 2026", 10),  # asctime
        ("99999999", MAX_RETRY_AFTER_SECONDS),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_in_both_forms(value: str | None, seconds: int | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_429_falls_back_to_details_then_to_a_default() -> None:
    body = ors_error("C1-GW-4290", "Too many requests", {"retryAfterSeconds": 42})
    from_details, by_default = read(429, body), read(429, b"slow down", {"Retry-After": "soon"})
    assert isinstance(from_details, RateLimited)
    assert isinstance(by_default, RateLimited)
    assert from_details.retry_after_seconds == 42
    assert by_default.retry_after_seconds == DEFAULT_RETRY_AFTER_SECONDS


async def test_an_odd_content_encoding_is_an_upstream_failure() -> None:
    """A single odd response (a body that claims gzip and is not), shaped with MockTransport."""

    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"Content-Encoding": "gzip"}, content=json.dumps(credentials_body()).encode()
        )

    settings = upstream_settings("http://upstream.invalid")
    async with httpx.AsyncClient(base_url=settings.upstream.url, transport=httpx.MockTransport(respond)) as http:
        client = UpstreamClient.from_settings(settings.upstream, http)
        ref = DeviceRef.parse(
            study_id=STUDY, mode=StudyMode.ACTIVE, subject_id=SUBJECT, inventory_id=READY_DEVICE, m_subject_id="M-1"
        )
        with pytest.raises(Refusal) as caught:
            await client.regenerate(ref, Caller(request_id="req-odd"))
    assert caught.value.code is ErrorCode.UPSTREAM_UNAVAILABLE


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_with_no_body_is_unrecognized_not_unavailable(status: int) -> None:
    """An answer, not a failure: it does not count toward the breaker, and it reads as the README says."""
    answer = Answer(status=status, headers=httpx.Headers({"Location": "https://elsewhere.example/"}), body=b"")
    with pytest.raises(UnrecognizedUpstream) as refused:
        read_answer(answer, now=datetime.now(UTC))
    assert (refused.value.upstream_status, refused.value.upstream_code) == (status, None)
