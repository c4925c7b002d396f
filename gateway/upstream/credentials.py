"""The Authorization header of upstream calls, as `GATEWAY_UPSTREAM_AUTH` chooses: an `httpx.Auth` per call.

- `forward`: the caller's own header, as it came. The upstream checks the caller's rights
  (DeviceActionsPost, per study and mode); a 401 is the caller's to fix, so nothing is renewed.
- `client-credentials`: a service account's bearer token from the OAuth2 client-credentials
  grant (RFC 6749 §4.4) at the token URL. The token is cached until shortly before it expires;
  however many requests need a new one, one refresh runs and the others wait for its result; a
  token the upstream rejects with 401 is replaced once (a 401 changed nothing upstream). A fetch
  has its own deadline (`GATEWAY_UPSTREAM_TOKEN_TIMEOUT_SECONDS`), which also bounds how long its
  waiters wait, and its answer is streamed and capped (`MAX_TOKEN_BODY_BYTES`, raw and inflated);
  the outcome of the last fetch is the auth's `readiness()`.

`UpstreamClient` asks for one `CallAuth` per call (`for_call(caller)`) and sends with
`http.send(request, auth=...)`; the token is fetched inside that send, by the auth flow. One per
call, because the caller's header belongs to that call alone (never kept on shared state, nor put
in request extensions, which travel on to the transport), and because the call's one renewal
(`renew()`) must know which token was refused.

Each flow sends once; the one resend after a 401 is `UpstreamClient`'s, beside its other rules
about when a PUT may go out again. A flow that yielded the request a second time would leave httpx
to read the refused answer whole, past the client's cap on answers, and to hold that answer's
pooled connection while the flow waits for a new token (whose fetch needs a connection too); and a
connect retry, which starts the flow afresh, would earn it a second renewal.

Tokens and the client secret are kept out of reprs, messages and logs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import httpx

from gateway.domain import Caller, Readiness, UpstreamFailure
from gateway.upstream.bodies import ACCEPT_ENCODING, read_capped
from gateway.upstream.resilience import ConnectRetry, MonotonicClock

log = logging.getLogger(__name__)

DEFAULT_TOKEN_LIFETIME_SECONDS = 300
"""For a token response without `expires_in` (Oracle's tokens live 10 minutes; assume less)."""
TOKEN_REFRESH_MARGIN_SECONDS = 60
"""Refresh this long before expiry (at most half the lifetime), so no call leaves with a dying token."""
MAX_TOKEN_BODY_BYTES = 64 * 1024
"""Cap on a token answer, raw and inflated: a token response is a few kilobytes."""
TOKEN_PROBE_SECONDS = 10.0
"""After a failed fetch, `readiness()` tries the token endpoint again at most this often (nothing else
would while the instance is out of rotation)."""
_TOKEN68 = re.compile(r"[\x21-\x7e]{1,8192}")


class CallAuth(httpx.Auth):
    """The `httpx.Auth` of one upstream call: it puts the Authorization header on each send."""

    awaiting_token = False
    """True while the call waits for its Authorization header: nothing of the call has been sent."""

    def renew(self) -> bool:
        """After a 401: True when one more send may cure it (that send then carries a fresh token)."""
        return False


class UpstreamAuth(Protocol):
    """Where the upstream calls' Authorization header comes from."""

    def for_call(self, caller: Caller) -> CallAuth:
        """The `httpx.Auth` for one call on `caller`'s behalf (its connect retries included)."""
        ...

    async def readiness(self) -> Readiness:
        """Whether calls can get their header now; `details` join the upstream client's (for `/readyz`)."""
        ...


class ForwardAuth(CallAuth):
    """The caller's Authorization header, forwarded unchanged (absent stays absent); a 401 is theirs."""

    def __init__(self, authorization: str | None = None) -> None:
        self._authorization = authorization

    def __repr__(self) -> str:
        return "ForwardAuth()"

    def for_call(self, caller: Caller) -> ForwardAuth:
        return ForwardAuth(caller.authorization)

    async def readiness(self) -> Readiness:
        return Readiness(True)  # the header comes with each call

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._authorization:
            request.headers["Authorization"] = self._authorization
        yield request


@dataclass(frozen=True)
class _Token:
    header: str = field(repr=False)
    refresh_at: float
    """On the monotonic clock."""


class _Refresh:
    """One token fetch in progress; its waiters read the outcome when `done` is set."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.failure: UpstreamFailure | None = None


class ClientCredentialsAuth:
    """A service account's token from the OAuth2 client-credentials grant, cached for every call.

    Each call gets a `ServiceTokenAuth` (`for_call`) that takes the token from here. A fetch ends
    within `timeout` seconds (its leader's call deadline may end it sooner); a caller waits no
    longer than that for a fetch in flight.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str,
        retry: ConnectRetry,
        timeout: float = 10.0,
        clock: MonotonicClock = time.monotonic,
    ) -> None:
        self._http = http
        self._token_url = token_url
        self._credentials = httpx.BasicAuth(client_id, client_secret)
        self._scope = scope
        self._retry = retry
        self._timeout = timeout
        self._clock = clock
        self._token: _Token | None = None
        self._refresh: _Refresh | None = None
        self._failure: UpstreamFailure | None = None
        """Why the last fetch failed; None once a fetch succeeds (or before the first)."""
        self._failed_at = 0.0

    def __repr__(self) -> str:
        return f"ClientCredentialsAuth(token_url={self._token_url!r})"

    def for_call(self, caller: Caller) -> ServiceTokenAuth:
        return ServiceTokenAuth(self, caller.request_id)

    def reject(self, header: str) -> None:
        """The upstream refused `header` with 401: whoever asks next fetches a new one, once, for all."""
        if self._token is not None and self._token.header == header:
            self._token = None

    async def readiness(self) -> Readiness:
        """Not ready while the last fetch failed. Then, at most every `TOKEN_PROBE_SECONDS`, this check
        fetches again itself, so that an instance taken out of rotation can come back."""
        probe_due = self._clock() - self._failed_at >= TOKEN_PROBE_SECONDS
        if self._failure is not None and self._refresh is None and probe_due:
            with contextlib.suppress(UpstreamFailure):
                await self._lead_refresh("readiness-probe")
        if self._failure is not None:
            return Readiness(False, {"tokenEndpoint": "failing", "tokenEndpointError": self._failure.reason})
        return Readiness(True, {"tokenEndpoint": "ok" if self._token is not None else "not asked yet"})

    async def token(self, request_id: str) -> str:
        """The Authorization header's value: the cached token, or a fresh one (one fetch at a time)."""
        while True:
            token = self._token
            if token is not None and self._clock() < token.refresh_at:
                return token.header
            refresh = self._refresh
            if refresh is None:
                return await self._lead_refresh(request_id)
            # The fetch ends within its own deadline; this bound holds even if it somehow did not.
            with anyio.move_on_after(self._timeout):
                await refresh.done.wait()
            if not refresh.done.is_set():
                reason = f"no service token within {self._timeout:g} s"
                log.warning("%s: gave up waiting for the token endpoint (request %s)", reason, request_id)
                raise UpstreamFailure(reason)
            if refresh.failure is not None:
                # The waiters share the leader's failure rather than each trying a failing endpoint.
                raise UpstreamFailure(refresh.failure.reason)
            # Success: the loop finds the new token. Leader cancelled: the loop elects a new leader.

    async def _lead_refresh(self, request_id: str) -> str:
        refresh = self._refresh = _Refresh()
        try:
            try:
                with anyio.fail_after(self._timeout):
                    token = await self._fetch(request_id)
            except TimeoutError:
                reason = f"token endpoint gave no whole answer within {self._timeout:g} s"
                log.error("%s (request %s)", reason, request_id)
                raise UpstreamFailure(reason) from None
        except UpstreamFailure as failure:
            refresh.failure = self._failure = failure
            self._failed_at = self._clock()
            raise
        finally:
            self._refresh = None
            refresh.done.set()
        self._token, self._failure = token, None
        return token.header

    async def _fetch(self, request_id: str) -> _Token:
        data = {"grant_type": "client_credentials"}
        if self._scope:
            data["scope"] = self._scope
        request = self._http.build_request(
            "POST",
            self._token_url,
            data=data,
            headers={"Accept": "application/json", "Accept-Encoding": ACCEPT_ENCODING, "X-Request-ID": request_id},
        )
        try:
            response = await self._retry.run(
                lambda: self._http.send(request, auth=self._credentials, stream=True),
                what="token endpoint",
                request_id=request_id,
            )
        except httpx.HTTPError as error:
            log.error("token endpoint unreachable (%s) (request %s)", type(error).__name__, request_id)
            raise UpstreamFailure("token endpoint unreachable") from None
        body = b""
        try:
            if response.status_code == 200:
                body = await read_capped(response, MAX_TOKEN_BODY_BYTES)
        except httpx.HTTPError as error:
            log.error("token endpoint's answer broke off (%s) (request %s)", type(error).__name__, request_id)
            raise UpstreamFailure("token endpoint's answer broke off") from None
        except UpstreamFailure as failure:
            log.error("token endpoint sent an unreadable answer: %s (request %s)", failure.reason, request_id)
            raise UpstreamFailure(f"token endpoint sent {failure.reason}") from None
        finally:
            await response.aclose()
        if response.status_code != 200:
            log.error(
                "token endpoint answered HTTP %d; check the GATEWAY_UPSTREAM_CLIENT_* settings (request %s)",
                response.status_code,
                request_id,
            )
            raise UpstreamFailure(f"token endpoint answered HTTP {response.status_code}")
        token = self._read_token(body)
        if token is None:
            log.error("token endpoint sent an unusable token response (request %s)", request_id)
            raise UpstreamFailure("token endpoint sent an unusable token response")
        log.info("fetched a service token for the upstream (request %s)", request_id)
        return token

    def _read_token(self, body: bytes) -> _Token | None:
        try:
            document: Any = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(document, dict):
            return None
        value = document.get("access_token")
        token_type = document.get("token_type", "Bearer")
        if not isinstance(value, str) or not _TOKEN68.fullmatch(value):
            return None
        if not isinstance(token_type, str) or token_type.casefold() != "bearer":
            return None
        lifetime = _seconds(document.get("expires_in"))
        margin = min(TOKEN_REFRESH_MARGIN_SECONDS, lifetime / 2)
        return _Token(header=f"Bearer {value}", refresh_at=self._clock() + lifetime - margin)


class ServiceTokenAuth(CallAuth):
    """One call's `httpx.Auth` in client-credentials mode: the service account's cached token on each
    send; after a 401, `renew()` drops that token, once, so that the one more send carries a fresh one."""

    def __init__(self, tokens: ClientCredentialsAuth, request_id: str) -> None:
        self._tokens = tokens
        self._request_id = request_id
        self._sent: str | None = None
        self._renewed = False

    def __repr__(self) -> str:
        return f"ServiceTokenAuth(request_id={self._request_id!r})"

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("the service token is fetched asynchronously: send with an httpx.AsyncClient")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        self.awaiting_token = True
        self._sent = await self._tokens.token(self._request_id)
        self.awaiting_token = False
        request.headers["Authorization"] = self._sent
        yield request

    def renew(self) -> bool:
        if self._renewed or self._sent is None:
            return False
        self._renewed = True
        self._tokens.reject(self._sent)
        return True


def _seconds(value: object) -> float:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return float(DEFAULT_TOKEN_LIFETIME_SECONDS)
