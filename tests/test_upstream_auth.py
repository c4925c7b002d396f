"""Credentials for the upstream: the caller's header forwarded, or a service account's cached token.

The scripted upstream also plays the OAuth2 token endpoint; its tokens (test-token-N) and the
client secret below are obviously fake test values.
"""

from __future__ import annotations

import base64
import logging
from typing import Any
from urllib.parse import parse_qs

import anyio
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.domain import Caller, ErrorCode, Refusal
from gateway.upstream import UpstreamClient
from gateway.upstream.credentials import TOKEN_REFRESH_MARGIN_SECONDS
from tests.demo import READY_REF
from tests.upstream_servers import (
    FAKE_OTP,
    TOKEN_PATH,
    Handler,
    ScriptedUpstream,
    SleepRecorder,
    Ticker,
    answer,
    credentials_body,
    serve_scripted,
    upstream_client,
    upstream_settings,
)
from tests.utils import free_port

pytestmark = pytest.mark.anyio

CLIENT_ID = "test-client-id"
CLIENT_SECRET = "test-client-secret-not-real"
REF = READY_REF


def caller(number: int = 1, authorization: str | None = None) -> Caller:
    return Caller(request_id=f"req-auth-{number}", authorization=authorization)


def service_account(url: str, token_url: str | None = None) -> dict[str, Any]:
    return {
        "upstream_auth": "client-credentials",
        "upstream_token_url": token_url or f"{url}{TOKEN_PATH}",
        "upstream_client_id": CLIENT_ID,
        "upstream_client_secret": CLIENT_SECRET,
        "upstream_scope": "tenant.ec-ors-svc.all",
    }


def accepting(*tokens: str) -> Handler:
    """An access-code handler that answers 200 to the given bearer tokens and 401 to anything else."""

    async def handle(request: Request) -> Response:
        if request.headers.get("authorization") in {f"Bearer {token}" for token in tokens}:
            return JSONResponse(credentials_body())
        return JSONResponse({"status": "failure", "errorData": {"errorCode": "REPT_401"}}, status_code=401)

    return handle


# ---------------------------------------------------------------------------------------------
# forward


async def test_forward_sends_the_callers_header_unchanged_or_none() -> None:
    async with serve_scripted() as (upstream, url), upstream_client(url) as client:
        await client.regenerate(REF, caller(1, "Bearer test-caller-token"))
        await client.regenerate(REF, caller(2))
    assert upstream.seen[0].headers["authorization"] == "Bearer test-caller-token"
    assert "authorization" not in upstream.seen[1].headers
    assert upstream.token_requests == []


async def test_forward_a_401_is_the_callers_and_is_not_resent() -> None:
    async with serve_scripted(ScriptedUpstream(handler=accepting())) as (upstream, url), upstream_client(url) as client:
        with pytest.raises(Refusal) as caught:
            await client.regenerate(REF, caller(1, "Bearer test-expired-token"))
    assert caught.value.code is ErrorCode.PERMISSION_DENIED
    assert len(upstream.seen) == 1


# ---------------------------------------------------------------------------------------------
# client-credentials


async def test_the_token_request_is_the_client_credentials_grant() -> None:
    async with serve_scripted() as (upstream, url), upstream_client(url, **service_account(url)) as client:
        await client.regenerate(REF, caller())
    (token_request,) = upstream.token_requests
    assert token_request.method == "POST"
    assert parse_qs(token_request.body.decode()) == {
        "grant_type": ["client_credentials"],
        "scope": ["tenant.ec-ors-svc.all"],
    }
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    assert token_request.headers["authorization"] == f"Basic {basic}"
    assert token_request.headers["x-request-id"] == "req-auth-1"
    assert upstream.seen[0].headers["authorization"] == "Bearer test-token-1"


async def test_the_token_is_cached_until_shortly_before_it_expires() -> None:
    clock = Ticker()
    async with serve_scripted() as (upstream, url), upstream_client(url, clock=clock, **service_account(url)) as client:
        for number in range(3):
            await client.regenerate(REF, caller(number))
        assert len(upstream.token_requests) == 1
        clock.advance(upstream.token_lifetime - TOKEN_REFRESH_MARGIN_SECONDS - 1)
        await client.regenerate(REF, caller(4))
        assert len(upstream.token_requests) == 1
        clock.advance(1)
        await client.regenerate(REF, caller(5))
        assert len(upstream.token_requests) == 2
    assert [seen.headers["authorization"] for seen in upstream.seen] == ["Bearer test-token-1"] * 4 + [
        "Bearer test-token-2"
    ]


async def test_one_refresh_however_many_requests_wait() -> None:
    upstream = ScriptedUpstream()

    async def slow_token(request: Request) -> Response:
        await anyio.sleep(0.1)
        return await upstream.issue_token(request)

    upstream.token_handler = slow_token
    results: list[str] = []

    async def call(client: UpstreamClient, number: int) -> None:
        results.append((await client.regenerate(REF, caller(number))).otp)

    async with (
        serve_scripted(upstream) as (_, url),
        upstream_client(url, **service_account(url)) as client,
        anyio.create_task_group() as tasks,
    ):
        for number in range(20):
            tasks.start_soon(call, client, number)
    assert results == [FAKE_OTP] * 20
    assert len(upstream.token_requests) == 1
    assert {seen.headers["authorization"] for seen in upstream.seen} == {"Bearer test-token-1"}


async def test_a_token_expiring_mid_flight_gets_one_fresh_token_and_one_resend() -> None:
    clock = Ticker()
    upstream = ScriptedUpstream()

    async def token_expires_while_in_flight(request: Request) -> Response:
        if len(upstream.seen) == 1:
            clock.advance(upstream.token_lifetime)  # the token dies between send and check
            return JSONResponse({"status": "failure", "errorData": {"errorCode": "REPT_401"}}, status_code=401)
        return await accepting("test-token-2")(request)

    upstream.handler = token_expires_while_in_flight
    async with (
        serve_scripted(upstream) as (_, url),
        upstream_client(url, clock=clock, **service_account(url)) as client,
    ):
        credentials = await client.regenerate(REF, caller())
    assert credentials.otp == FAKE_OTP
    assert len(upstream.token_requests) == 2
    assert [seen.headers["authorization"] for seen in upstream.seen] == ["Bearer test-token-1", "Bearer test-token-2"]


async def test_a_rejected_token_is_replaced_even_before_its_expiry() -> None:
    async with (
        serve_scripted(ScriptedUpstream(handler=accepting("test-token-2"))) as (upstream, url),
        upstream_client(url, **service_account(url)) as client,
    ):
        assert (await client.regenerate(REF, caller(1))).otp == FAKE_OTP
        assert (await client.regenerate(REF, caller(2))).otp == FAKE_OTP  # the fresh token is cached
    assert len(upstream.token_requests) == 2
    assert len(upstream.seen) == 3


async def test_a_second_401_is_permission_denied_and_nothing_more_is_sent() -> None:
    async with (
        serve_scripted(ScriptedUpstream(handler=accepting())) as (upstream, url),
        upstream_client(url, **service_account(url)) as client,
    ):
        with pytest.raises(Refusal) as caught:
            await client.regenerate(REF, caller())
    assert caught.value.code is ErrorCode.PERMISSION_DENIED
    assert len(upstream.seen) == 2
    assert len(upstream.token_requests) == 2


async def test_the_token_endpoint_down_is_upstream_unavailable_and_nothing_is_sent() -> None:
    token_url = f"http://127.0.0.1:{free_port()}{TOKEN_PATH}"
    async with serve_scripted() as (upstream, url):
        options = service_account(url, token_url)
        async with upstream_client(url, sleep=SleepRecorder(), **options) as client:
            with pytest.raises(Refusal) as caught:
                await client.regenerate(REF, caller())
    assert caught.value.code is ErrorCode.UPSTREAM_UNAVAILABLE
    assert upstream.seen == []


@pytest.mark.parametrize(
    "token_answer",
    [
        pytest.param(answer(401, {"error": "invalid_client"}), id="bad-client-secret"),
        pytest.param(answer(503, "<html>down</html>"), id="503"),
        pytest.param(answer(200, {"token_type": "Bearer", "expires_in": 600}), id="no-access-token"),
        pytest.param(answer(200, {"access_token": "test-token", "token_type": "mac"}), id="not-bearer"),
        pytest.param(answer(200, {"access_token": "two words"}), id="not-a-token"),
        pytest.param(answer(200, "not json"), id="not-json"),
    ],
)
async def test_waiters_share_a_failed_refresh(token_answer: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway")
    upstream = ScriptedUpstream()

    async def slow_failure(request: Request) -> Response:
        await anyio.sleep(0.05)
        response: Response = await token_answer(request)
        return response

    upstream.token_handler = slow_failure
    codes: list[ErrorCode] = []

    async def call(client: UpstreamClient, number: int) -> None:
        try:
            await client.regenerate(REF, caller(number))
        except Refusal as refusal:
            codes.append(refusal.code)

    async with (
        serve_scripted(upstream) as (_, url),
        upstream_client(url, **service_account(url)) as client,
        anyio.create_task_group() as tasks,
    ):
        for number in range(5):
            tasks.start_soon(call, client, number)
    assert codes == [ErrorCode.UPSTREAM_UNAVAILABLE] * 5
    assert len(upstream.token_requests) == 1
    assert upstream.seen == []
    assert CLIENT_SECRET not in caplog.text


async def test_secrets_stay_out_of_reprs_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway")
    async with serve_scripted() as (upstream, url), upstream_client(url, **service_account(url)) as client:
        credentials = await client.regenerate(REF, caller())
        assert CLIENT_SECRET not in repr(client.auth)
        assert "test-token-1" not in repr(client.auth.__dict__)
    settings = upstream_settings(url, **service_account(url))
    assert CLIENT_SECRET not in repr(settings)
    assert FAKE_OTP not in repr(credentials)
    for secret in (CLIENT_SECRET, "test-token-1", FAKE_OTP):
        assert secret not in caplog.text
    assert upstream.seen
