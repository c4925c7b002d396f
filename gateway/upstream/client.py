"""`UpstreamClient`: the `Backend` that regenerates by calling Clinical One's access-code PUT.

One call, one PUT: the request is built from the validated `DeviceRef` (each path segment
percent-encoded, `mSubjectId` as an encoded query parameter), sent through the breaker and the
concurrency limit, retried only when the connection could not be made, and its answer read by
`answers.read_answer`. With a service account, a 401 gets one fresh token and one more send.
Each call is logged with the caller's request id, which also goes upstream as `X-Request-ID`.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import TYPE_CHECKING
from urllib.parse import quote

import anyio
import httpx

from gateway import __version__
from gateway.contract import ACCESS_CODE_PATH
from gateway.domain import (
    Attempt,
    Caller,
    Clock,
    Credentials,
    DeviceRef,
    InvalidInput,
    Readiness,
    Refusal,
    UpstreamFailure,
    utc_now,
)
from gateway.metrics import UPSTREAM_REQUESTS
from gateway.settings import UpstreamSettings
from gateway.upstream.answers import MAX_BODY_BYTES, Answer, read_answer
from gateway.upstream.bodies import ACCEPT_ENCODING, read_capped
from gateway.upstream.credentials import CallAuth, ClientCredentialsAuth, ForwardAuth, UpstreamAuth
from gateway.upstream.resilience import (
    NOT_SENT,
    BreakerState,
    CircuitBreaker,
    ConcurrencyLimit,
    ConnectRetry,
    MonotonicClock,
    Outcome,
    Sleep,
)
from gateway.upstream.transport import AiohttpTransport

if TYPE_CHECKING:
    from gateway.tracing import Tracing

log = logging.getLogger(__name__)


def upstream_http_client(settings: UpstreamSettings) -> httpx.AsyncClient:
    """The one pooled HTTP client for upstream calls (and the token endpoint); the lifespan closes it.

    httpx's API over aiohttp's connection pool (`transport.AiohttpTransport`): the same timeouts,
    pool limits and keep-alive expiry, at a fraction of the CPU per call.
    """
    verify = (
        ssl.create_default_context(cafile=settings.ca_file)
        if settings.ca_file
        else httpx.create_ssl_context(trust_env=False)  # certifi's bundle, as httpx's default transport
    )
    limits = httpx.Limits(
        max_connections=settings.max_connections,
        max_keepalive_connections=settings.max_keepalive_connections,
        keepalive_expiry=settings.keepalive_expiry_seconds,
    )
    return httpx.AsyncClient(
        base_url=settings.url,
        transport=AiohttpTransport(verify=verify, limits=limits),
        timeout=httpx.Timeout(
            connect=settings.connect_timeout_seconds,
            read=settings.read_timeout_seconds,
            write=settings.write_timeout_seconds,
            pool=settings.pool_timeout_seconds,
        ),
        # A PUT is never replayed elsewhere: a redirect is reported, not followed.
        follow_redirects=False,
        # Explicit configuration only: no proxy variables or .netrc credentials picked up from the host.
        trust_env=False,
        headers={"User-Agent": f"clinical-one-credentials-gateway/{__version__}"},
    )


def _segment(value: str, field: str) -> str:
    """One path segment, percent-encoded; dot segments refused.

    `DeviceRef.parse` already allows only letters, digits, '.', '_' and '-'; this second lock
    holds for a `DeviceRef` built by hand too: no value can add a segment, a query or a fragment.
    """
    if value in ("", ".", ".."):
        raise InvalidInput(field, "is not a valid path segment")
    return quote(value, safe="")


def access_code_path(ref: DeviceRef) -> str:
    """The upstream's access-code path for `ref` (the same template the REST face serves)."""
    return ACCESS_CODE_PATH.format(
        studyId=_segment(ref.study_id, "studyId"),
        mode=_segment(ref.mode.value, "mode"),
        subjectId=_segment(ref.subject_id, "subjectId"),
        inventoryId=_segment(ref.inventory_id, "inventoryId"),
    )


class UpstreamClient:
    """The Backend that asks Clinical One itself for new credentials."""

    name = "upstream"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        auth: UpstreamAuth,
        retry: ConnectRetry,
        limit: ConcurrencyLimit,
        breaker: CircuitBreaker,
        total_timeout: float = 150.0,
        now: Clock = utc_now,
        tracing: Tracing | None = None,
    ) -> None:
        self.http = http
        self.tracing = tracing
        self.total_timeout = total_timeout
        self.auth = auth
        self.retry = retry
        self.limit = limit
        self.breaker = breaker
        self.now = now

    @classmethod
    def from_settings(
        cls,
        settings: UpstreamSettings,
        http: httpx.AsyncClient,
        *,
        clock: MonotonicClock = time.monotonic,
        now: Clock = utc_now,
        sleep: Sleep = anyio.sleep,
        tracing: Tracing | None = None,
    ) -> UpstreamClient:
        """The client the settings describe, over `http` (from `upstream_http_client`, owned by the caller)."""
        retry = ConnectRetry(settings.connect_retries, settings.retry_backoff_seconds, sleep=sleep)
        auth: UpstreamAuth = ForwardAuth()
        if settings.auth == "client-credentials":
            auth = ClientCredentialsAuth(
                http,
                token_url=settings.token_url,
                client_id=settings.client_id,
                client_secret=settings.client_secret.get_secret_value(),
                scope=settings.scope,
                retry=retry,
                timeout=settings.token_timeout_seconds,
                clock=clock,
            )
        return cls(
            http,
            auth=auth,
            retry=retry,
            limit=ConcurrencyLimit(settings.max_concurrency, settings.queue_timeout_seconds),
            breaker=CircuitBreaker(settings.breaker_failure_threshold, settings.breaker_reset_seconds, clock=clock),
            total_timeout=settings.total_timeout_seconds,
            now=now,
            tracing=tracing,
        )

    async def regenerate(self, ref: DeviceRef, caller: Caller, attempt: Attempt | None = None) -> Credentials:
        path = access_code_path(ref)  # before anything else: a bad value never leaves the gateway
        ticket = self.breaker.admit(caller.request_id)
        outcome = Outcome.NONE
        try:
            if attempt is not None:
                await attempt.begin()  # durable before the call: a crash during it leaves an attempt of unknown outcome
            async with self.limit.turn(caller.request_id):
                try:
                    credentials = await self._exchange(path, ref, caller)
                except UpstreamFailure:
                    outcome = Outcome.FAILURE
                    raise
                except Refusal:
                    outcome = Outcome.SUCCESS  # the upstream answered; "no" is an answer
                    raise
                outcome = Outcome.SUCCESS
                return credentials
        finally:
            self.breaker.settle(ticket, outcome)

    async def readiness(self) -> Readiness:
        """Not ready while the breaker is open, nor while the service account's last token fetch failed."""
        auth = await self.auth.readiness()
        state = self.breaker.state
        return Readiness(
            state is not BreakerState.OPEN and auth.ready,
            {
                "circuit": state.value,
                "consecutiveFailures": self.breaker.consecutive_failures,
                "inFlight": self.limit.in_flight,
                "waiting": self.limit.waiting,
                **auth.details,
            },
        )

    async def _exchange(self, path: str, ref: DeviceRef, caller: Caller) -> Credentials:
        auth = self.auth.for_call(caller)
        answer = await self._send(path, ref, caller, auth)
        if answer.status == 401 and auth.renew():
            # The token was refused before anything happened upstream: one fresh token, one more send.
            log.info(
                "upstream answered 401: renewing the service token and sending once more (request %s)",
                caller.request_id,
            )
            answer = await self._send(path, ref, caller, auth)
        try:
            return read_answer(answer, now=self.now())
        except UpstreamFailure as failure:
            log.warning("upstream gave no usable answer: %s (request %s)", failure.reason, caller.request_id)
            raise
        except Refusal as refusal:
            log.info(
                "upstream refused: %s (HTTP %d) (request %s)", refusal.code.value, answer.status, caller.request_id
            )
            raise

    async def _send(self, path: str, ref: DeviceRef, caller: Caller, auth: CallAuth) -> Answer:
        headers = {"Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING, "X-Request-ID": caller.request_id}
        request = self.http.build_request("PUT", self._url(path, ref), headers=headers)
        if self.tracing is None:
            return await self._deliver(request, caller, auth)
        # A span per call, named by the path's template (the path names the subject); `traceparent` goes along.
        with self.tracing.upstream_call(request, ACCESS_CODE_PATH) as call:
            try:
                answer = await self._deliver(request, caller, auth)
            except UpstreamFailure as failure:
                call.failed(failure.reason)
                raise
            call.answered(answer.status)
            return answer

    def _url(self, path: str, ref: DeviceRef) -> httpx.URL:
        """The call's absolute URL: the client's base URL, `path` and the `mSubjectId` query, put
        together as httpx would from `build_request(path, params=…)`, but in one step (httpx
        parses a URL three times there: a third of an upstream call's CPU, profiled)."""
        base = self.http.base_url
        query = str(httpx.QueryParams({"mSubjectId": ref.m_subject_id}))
        return base.copy_with(raw_path=base.raw_path + f"{path.lstrip('/')}?{query}".encode("ascii"))

    async def _deliver(self, request: httpx.Request, caller: Caller, auth: CallAuth) -> Answer:
        """Send `request` (connect retries only), read the answer within the caps and the deadline."""
        started = time.perf_counter()
        try:
            # httpx's timeouts bound each connect, write and read; this bounds the call as a whole.
            with anyio.fail_after(self.total_timeout):
                response = await self.retry.run(
                    lambda: self.http.send(request, stream=True, auth=auth),
                    what="upstream",
                    request_id=caller.request_id,
                )
                try:
                    body = await read_capped(response, MAX_BODY_BYTES)
                finally:
                    await response.aclose()
        except TimeoutError:
            UPSTREAM_REQUESTS.labels(status="error").inc()
            reason = f"no whole answer within {self.total_timeout:g} s; it may have reached the upstream, so not resent"
            if auth.awaiting_token:  # the deadline ran out during the token fetch: the PUT never left
                reason = f"no service token within the call's {self.total_timeout:g} s; nothing was sent"
            log.warning("upstream call failed: %s (request %s)", reason, caller.request_id)
            raise UpstreamFailure(reason) from None
        except httpx.HTTPError as error:
            UPSTREAM_REQUESTS.labels(status="error").inc()
            # Only the class name: an exception's text can quote what the server sent.
            reason = f"{type(error).__name__}; it may have reached the upstream, so it is not resent"
            if isinstance(error, NOT_SENT):
                reason = f"{type(error).__name__} on each of {self.retry.retries + 1} attempts"
            elif isinstance(error, httpx.PoolTimeout):
                reason = "PoolTimeout: no pooled connection came free; nothing was sent"
            log.warning("upstream call failed: %s (request %s)", reason, caller.request_id)
            raise UpstreamFailure(reason) from None
        except UpstreamFailure as failure:
            UPSTREAM_REQUESTS.labels(status="error").inc()
            log.warning("upstream call failed: %s (request %s)", failure.reason, caller.request_id)
            raise
        UPSTREAM_REQUESTS.labels(status=str(response.status_code)).inc()
        log.info(
            "upstream PUT access-code -> HTTP %d in %.0f ms (request %s)",
            response.status_code,
            (time.perf_counter() - started) * 1000,
            caller.request_id,
        )
        return Answer(status=response.status_code, headers=response.headers, body=body)
