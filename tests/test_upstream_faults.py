"""The upstream client against real loopback servers that misbehave: every fault is a union member.

Whatever goes wrong after the request may have reached the upstream is reported, never resent:
each test that can tell counts the requests the server saw.
"""

from __future__ import annotations

import email.utils
import logging
import socket
import time
from datetime import UTC, datetime, timedelta

import anyio
import pytest
import uvicorn
from anyio.abc import SocketStream
from starlette.requests import Request
from starlette.responses import Response

from gateway.domain import Caller, Credentials, ErrorCode, RateLimited, Refusal, UnrecognizedUpstream
from gateway.upstream.answers import MAX_BODY_BYTES
from tests.demo import READY_DEVICE, READY_REF, STUDY, SUBJECT
from tests.upstream_servers import (
    DEVICE_INSTANCE,
    FAKE_ACCESS_ID,
    FAKE_OTP,
    ScriptedUpstream,
    SleepRecorder,
    answer,
    credentials_body,
    ors_error,
    raw_server,
    reset,
    serve_scripted,
    upstream_client,
)
from tests.utils import free_port

pytestmark = pytest.mark.anyio

CALLER = Caller(request_id="req-faults-1")
REF = READY_REF


JSON_200 = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


async def refusal_from(url: str, **options: object) -> Refusal:
    async with upstream_client(url, **options) as client:  # type: ignore[arg-type]
        with pytest.raises(Refusal) as caught:
            await client.regenerate(REF, CALLER)
    return caught.value


async def scripted_refusal(handler: object, **options: object) -> tuple[Refusal, ScriptedUpstream]:
    async with serve_scripted(ScriptedUpstream(handler=handler)) as (upstream, url):  # type: ignore[arg-type]
        refusal = await refusal_from(url, **options)
    return refusal, upstream


# ---------------------------------------------------------------------------------------------
# Successes


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(credentials_body(), id="bare"),
        pytest.param(credentials_body(wrapped=True), id="wrapped"),
        pytest.param(credentials_body(wrapped=True, status="SUCCESS"), id="wrapped-status-upper-case"),
        pytest.param(credentials_body(wrapped=True, status="success"), id="wrapped-status-lower-case"),
    ],
)
async def test_a_200_bare_or_wrapped_gives_the_credentials(body: dict[str, object]) -> None:
    async with (
        serve_scripted(ScriptedUpstream(handler=answer(200, body))) as (upstream, url),
        upstream_client(url) as client,
    ):
        credentials = await client.regenerate(REF, CALLER)
    assert credentials == Credentials(
        access_id=FAKE_ACCESS_ID, otp=FAKE_OTP, device_id=DEVICE_INSTANCE, expires_at=None
    )
    assert len(upstream.seen) == 1


async def test_the_request_is_the_documented_put_with_the_request_id() -> None:
    async with serve_scripted() as (upstream, url), upstream_client(url) as client:
        await client.regenerate(REF, CALLER)
    (seen,) = upstream.seen
    assert seen.method == "PUT"
    assert seen.raw_path == (
        f"/ec-ors-svc/rest/v1.0/studies/{STUDY}/active/subjects/{SUBJECT}/devices/{READY_DEVICE}/access-code"
    )
    assert seen.query == "mSubjectId=MSUBJECT-001"
    assert seen.headers["x-request-id"] == CALLER.request_id
    assert seen.headers["accept"] == "application/json"
    assert "authorization" not in seen.headers  # forward mode, and this caller sent none


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"accessId": FAKE_ACCESS_ID, "id": DEVICE_INSTANCE}, id="no-otp"),
        pytest.param({"accessId": "", "id": DEVICE_INSTANCE, "otp": FAKE_OTP}, id="empty-access-id"),
        pytest.param({"accessId": FAKE_ACCESS_ID, "id": 42, "otp": FAKE_OTP}, id="id-not-a-string"),
        pytest.param({"status": "Success", "result": {"otp": FAKE_OTP}}, id="wrapped-partial"),
        pytest.param([credentials_body()], id="a-list"),
        pytest.param(None, id="null"),
    ],
)
async def test_a_success_body_missing_a_field_is_an_upstream_fault(body: object) -> None:
    refusal, upstream = await scripted_refusal(answer(200, body))
    assert refusal.code is ErrorCode.UPSTREAM_UNAVAILABLE
    assert len(upstream.seen) == 1


# ---------------------------------------------------------------------------------------------
# Transport faults: nothing is resent once the request may have arrived.


async def test_a_slow_upstream_times_out_and_sees_exactly_one_request() -> None:
    upstream = ScriptedUpstream()
    upstream.handler = upstream.hang
    async with serve_scripted(upstream) as (_, url):
        refusal = await refusal_from(url, upstream_read_timeout_seconds=0.2)
        assert refusal.code is ErrorCode.UPSTREAM_UNAVAILABLE
        assert len(upstream.seen) == 1


async def test_a_refused_port_is_retried_with_bounded_jittered_backoff() -> None:
    sleep = SleepRecorder()
    refusal = await refusal_from(
        f"http://127.0.0.1:{free_port()}", sleep=sleep, upstream_connect_retries=2, upstream_retry_backoff_seconds=0.1
    )
    assert refusal.code is ErrorCode.UPSTREAM_UNAVAILABLE
    assert len(sleep.delays) == 2
    assert 0.05 <= sleep.delays[0] <= 0.1
    assert 0.1 <= sleep.delays[1] <= 0.2


async def test_a_connect_failure_then_success_is_one_regeneration() -> None:
    """The upstream starts listening during the backoff: the retry connects, and one PUT is seen."""
    upstream = ScriptedUpstream()
    delays: list[float] = []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused until the server starts
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        server = uvicorn.Server(uvicorn.Config(upstream.app, log_level="warning", lifespan="off"))
        async with anyio.create_task_group() as tasks:

            async def start_upstream_while_backing_off(seconds: float) -> None:
                delays.append(seconds)
                tasks.start_soon(server.serve, [sock])
                while not server.started:  # noqa: ASYNC110 (uvicorn's Server offers no event to wait on)
                    await anyio.sleep(0.01)

            async with upstream_client(
                url, sleep=start_upstream_while_backing_off, upstream_connect_retries=2
            ) as client:
                credentials = await client.regenerate(REF, CALLER)
            server.should_exit = True
    assert credentials.otp == FAKE_OTP
    assert len(delays) == 1
    assert len(upstream.seen) == 1


async def test_a_tls_error_is_upstream_unavailable_and_no_request_is_read() -> None:
    async def plain_http(stream: SocketStream) -> None:
        await stream.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    async with raw_server(plain_http, read_request=False) as server:
        tls_url = server.url.replace("http://", "https://")
        refusal = await refusal_from(tls_url, sleep=SleepRecorder(), upstream_connect_retries=1)
    assert refusal.code is ErrorCode.UPSTREAM_UNAVAILABLE
    assert server.connections == 2  # a handshake failure is a failure to connect: retried
    assert server.requests == []


async def test_a_reset_mid_response_is_not_resent() -> None:
    async def reset_mid_body(stream: SocketStream) -> None:
        await stream.send(
            b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 80\r\n\r\n{"accessId": "TE'
        )
        await reset(stream)

    async with raw_server(reset_mid_body) as server:
        refusal = await refusal_from(server.url)
    assert refusal.code is ErrorCode.UPSTREAM_UNAVAILABLE
    assert server.connections == 1
    assert len(server.requests) == 1


async def test_a_reset_before_any_response_is_not_resent() -> None:
    async with raw_server(reset) as server:
        refusal = await refusal_from(server.url)
    assert refusal.code is ErrorCode.UPSTREAM_UNAVAILABLE
    assert server.connections == 1


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(
            JSON_200 + b'Content-Length: 200\r\n\r\n{"accessId": "TEST01", "id"', id="body-shorter-than-length"
        ),
        pytest.param(JSON_200 + b'Content-Length: 27\r\n\r\n{"accessId": "TEST01", "id"', id="json-cut-short"),
        pytest.param(JSON_200 + b'Connection: close\r\n\r\n{"accessId": "TEST01", "otp": "TE', id="close-delimited"),
        pytest.param(JSON_200 + b'Transfer-Encoding: chunked\r\n\r\n10\r\n{"accessId": "TE', id="chunked-cut-short"),
    ],
)
async def test_truncated_json_is_upstream_unavailable(response: bytes) -> None:
    async def truncated(stream: SocketStream) -> None:
        await stream.send(response)

    async with raw_server(truncated) as server:
        refusal = await refusal_from(server.url)
    assert refusal.code is ErrorCode.UPSTREAM_UNAVAILABLE
    assert server.connections == 1


async def test_a_dripping_body_meets_the_whole_call_deadline() -> None:
    """Each read arrives within the read timeout, but the answer never ends: the deadline cuts it off."""

    async def drip(stream: SocketStream) -> None:
        await stream.send(JSON_200 + b'Content-Length: 1000\r\n\r\n{"accessId": ')
        for _ in range(100):
            await anyio.sleep(0.1)
            await stream.send(b" ")

    started = time.perf_counter()
    async with raw_server(drip) as server:
        refusal = await refusal_from(server.url, upstream_read_timeout_seconds=2.0, upstream_total_timeout_seconds=0.5)
    assert refusal.code is ErrorCode.UPSTREAM_UNAVAILABLE
    assert time.perf_counter() - started < 3
    assert len(server.requests) == 1


async def test_an_oversized_body_is_refused_unread() -> None:
    refusal, upstream = await scripted_refusal(answer(200, {"padding": "x" * (MAX_BODY_BYTES + 1)}))
    assert refusal.code is ErrorCode.UPSTREAM_UNAVAILABLE
    assert len(upstream.seen) == 1


# ---------------------------------------------------------------------------------------------
# Statuses and error bodies


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_gateway_statuses_are_upstream_unavailable(status: int) -> None:
    refusal, upstream = await scripted_refusal(answer(status, {"message": "try later"}))
    assert refusal.code is ErrorCode.UPSTREAM_UNAVAILABLE
    assert len(upstream.seen) == 1


@pytest.mark.parametrize("status", [400, 500])
async def test_an_html_error_page_is_upstream_unavailable(status: int) -> None:
    page = "<html><head><title>Error</title></head><body><h1>Something went wrong</h1></body></html>"
    refusal, _ = await scripted_refusal(answer(status, page))
    assert refusal.code is ErrorCode.UPSTREAM_UNAVAILABLE


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, ErrorCode.PERMISSION_DENIED),
        (403, ErrorCode.PERMISSION_DENIED),
        (404, ErrorCode.STUDY_NOT_FOUND),
    ],
)
async def test_statuses_that_decide_alone(status: int, expected: ErrorCode) -> None:
    refusal, upstream = await scripted_refusal(answer(status, ors_error("ANY", "anything")))
    assert refusal.code is expected
    assert len(upstream.seen) == 1  # forward mode: a 401 is the caller's; nothing is resent


async def test_429_with_retry_after_in_seconds() -> None:
    refusal, _ = await scripted_refusal(answer(429, ors_error("THROTTLED", "Too many"), {"Retry-After": "7"}))
    assert refusal.code is ErrorCode.RATE_LIMITED
    assert isinstance(refusal, RateLimited)
    assert refusal.retry_after_seconds == 7


async def test_429_with_retry_after_as_an_http_date() -> None:
    now = datetime(2026, 3, 1, 9, 30, 0, tzinfo=UTC)
    when = email.utils.format_datetime(now + timedelta(seconds=120), usegmt=True)
    scripted = ScriptedUpstream(handler=answer(429, None, {"Retry-After": when}))
    async with serve_scripted(scripted) as (_, url), upstream_client(url) as client:
        client.now = lambda: now
        with pytest.raises(Refusal) as caught:
            await client.regenerate(REF, CALLER)
    assert caught.value.code is ErrorCode.RATE_LIMITED
    assert isinstance(caught.value, RateLimited)
    assert caught.value.retry_after_seconds == 120


async def test_details_as_a_string_and_code_known() -> None:
    body = ors_error("C1-DEV-4002", "Bad request", "Device is not dispensed to the subject")
    refusal, _ = await scripted_refusal(answer(400, body))
    assert refusal.code is ErrorCode.DEVICE_NOT_DISPENSED


async def test_details_as_a_string_carrying_the_prose() -> None:
    body = ors_error("C1-003", "Request failed", "  the DEVICE is dispensed to a different subject.")
    refusal, _ = await scripted_refusal(answer(400, body))
    assert refusal.code is ErrorCode.DEVICE_DISPENSED_TO_ANOTHER_SUBJECT


async def test_an_unknown_400_code_is_unrecognized_with_status_and_code() -> None:
    body = ors_error("C1-999", "Something new went wrong", {"field": "inventoryId", "reason": "Quarantined"})
    refusal, _ = await scripted_refusal(answer(400, body))
    assert refusal.code is ErrorCode.UNRECOGNIZED_UPSTREAM_ERROR
    assert isinstance(refusal, UnrecognizedUpstream)
    assert (refusal.upstream_status, refusal.upstream_code) == (400, "C1-999")
    assert refusal.message == "Unrecognized upstream error"  # nothing of the body


async def test_a_redirect_is_not_followed() -> None:
    refusal, upstream = await scripted_refusal(answer(302, None, {"Location": "/elsewhere"}))
    assert refusal.code is ErrorCode.UNRECOGNIZED_UPSTREAM_ERROR
    assert isinstance(refusal, UnrecognizedUpstream)
    assert refusal.upstream_status == 302
    assert len(upstream.seen) == 1


async def test_500_causes_are_their_members() -> None:
    refusal, _ = await scripted_refusal(answer(500, ors_error(None, "mHealth settings are not found")))
    assert refusal.code is ErrorCode.MHEALTH_SETTINGS_NOT_FOUND
    refusal, _ = await scripted_refusal(answer(500, ors_error("C1-DEV-5000", "Internal server error")))
    assert refusal.code is ErrorCode.INTERNAL_SERVER_ERROR


# ---------------------------------------------------------------------------------------------
# Never leak


async def test_logs_carry_the_request_id_and_never_the_otp(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway")

    async def echo_secret_in_error(request: Request) -> Response:
        return await answer(400, ors_error("C1-999", f"otp {FAKE_OTP} leaked", {"otp": FAKE_OTP}))(request)

    async with serve_scripted() as (upstream, url), upstream_client(url) as client:
        await client.regenerate(REF, CALLER)
        upstream.handler = echo_secret_in_error
        with pytest.raises(Refusal) as caught:
            await client.regenerate(REF, CALLER)
    assert FAKE_OTP not in caplog.text
    assert FAKE_OTP not in str(caught.value)
    assert FAKE_OTP not in repr(caught.value)
    upstream_records = [record for record in caplog.records if record.name.startswith("gateway.upstream")]
    assert upstream_records
    assert all(CALLER.request_id in record.getMessage() for record in upstream_records)
