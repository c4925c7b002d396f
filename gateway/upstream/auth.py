"""The Authorization header sent upstream, as `GATEWAY_UPSTREAM_AUTH` chooses.

- `forward`: the caller's own header, as it came. The upstream checks the caller's rights
  (DeviceActionsPost, per study and mode); a 401 is the caller's to fix, so nothing is renewed.
- `client-credentials`: a service account's bearer token from the OAuth2 client-credentials
  grant (RFC 6749 §4.4) at the token URL. The token is cached until shortly before it expires;
  however many requests need a new one, one refresh runs and the others wait for its result; a
  token the upstream rejects with 401 is replaced once (a 401 changed nothing upstream).

Tokens and the client secret are kept out of reprs, messages and logs.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import httpx

from gateway.domain import Caller
from gateway.upstream.resilience import ConnectRetry, MonotonicClock
from gateway.upstream.responses import UpstreamFailure

log = logging.getLogger(__name__)

DEFAULT_TOKEN_LIFETIME_SECONDS = 300
"""For a token response without `expires_in` (Oracle's tokens live 10 minutes; assume less)."""
TOKEN_REFRESH_MARGIN_SECONDS = 60
"""Refresh this long before expiry (at most half the lifetime), so no call leaves with a dying token."""
_TOKEN68 = re.compile(r"[\x21-\x7e]{1,8192}")


class UpstreamAuth(Protocol):
    """Where the upstream call's Authorization header comes from."""

    renewable: bool
    """True when a 401 may be cured by `authorize(caller, rejected=...)` and one more send."""

    async def authorize(self, caller: Caller, *, rejected: str | None = None) -> str | None:
        """The header value for a call on `caller`'s behalf; `rejected` is one the upstream just refused."""
        ...


class ForwardAuth:
    """The caller's Authorization header, forwarded unchanged (absent stays absent)."""

    renewable = False

    async def authorize(self, caller: Caller, *, rejected: str | None = None) -> str | None:
        return caller.authorization


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
    """A cached service-account token from the OAuth2 client-credentials grant."""

    renewable = True

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str,
        retry: ConnectRetry,
        clock: MonotonicClock = time.monotonic,
    ) -> None:
        self._http = http
        self._token_url = token_url
        self._credentials = httpx.BasicAuth(client_id, client_secret)
        self._scope = scope
        self._retry = retry
        self._clock = clock
        self._token: _Token | None = None
        self._refresh: _Refresh | None = None

    def __repr__(self) -> str:
        return f"ClientCredentialsAuth(token_url={self._token_url!r})"

    async def authorize(self, caller: Caller, *, rejected: str | None = None) -> str:
        if rejected is not None and self._token is not None and self._token.header == rejected:
            self._token = None  # refused upstream: whoever asks next fetches a new one, once, for all
        while True:
            token = self._token
            if token is not None and self._clock() < token.refresh_at:
                return token.header
            refresh = self._refresh
            if refresh is None:
                return await self._lead_refresh(caller)
            await refresh.done.wait()
            if refresh.failure is not None:
                # The waiters share the leader's failure rather than each trying a failing endpoint.
                raise UpstreamFailure(refresh.failure.reason)
            # Success: the loop finds the new token. Leader cancelled: the loop elects a new leader.

    async def _lead_refresh(self, caller: Caller) -> str:
        refresh = self._refresh = _Refresh()
        try:
            self._token = await self._fetch(caller)
            return self._token.header
        except UpstreamFailure as failure:
            refresh.failure = failure
            raise
        finally:
            self._refresh = None
            refresh.done.set()

    async def _fetch(self, caller: Caller) -> _Token:
        data = {"grant_type": "client_credentials"}
        if self._scope:
            data["scope"] = self._scope
        request = self._http.build_request(
            "POST",
            self._token_url,
            data=data,
            headers={"Accept": "application/json", "X-Request-ID": caller.request_id},
        )
        try:
            response = await self._retry.run(
                lambda: self._http.send(request, auth=self._credentials),
                what="token endpoint",
                request_id=caller.request_id,
            )
        except httpx.HTTPError as error:
            log.error("token endpoint unreachable (%s) (request %s)", type(error).__name__, caller.request_id)
            raise UpstreamFailure("token endpoint unreachable") from None
        if response.status_code != 200:
            log.error(
                "token endpoint answered HTTP %d; check the GATEWAY_UPSTREAM_CLIENT_* settings (request %s)",
                response.status_code,
                caller.request_id,
            )
            raise UpstreamFailure(f"token endpoint answered HTTP {response.status_code}")
        token = self._read_token(response.content)
        if token is None:
            log.error("token endpoint sent an unusable token response (request %s)", caller.request_id)
            raise UpstreamFailure("token endpoint sent an unusable token response")
        log.info("fetched a service token for the upstream (request %s)", caller.request_id)
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


def _seconds(value: object) -> float:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return float(DEFAULT_TOKEN_LIFETIME_SECONDS)
