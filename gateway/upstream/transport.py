"""`AiohttpTransport`: httpx's API over aiohttp's HTTP/1.1 connection pool, with httpx's guarantees.

aiohttp's client costs about a sixth of httpx's default transport in CPU per request (README,
"Upstream mode"), so upstream calls go through it; the gateway still speaks only httpx. Three
things of aiohttp's differ from what upstream calls rely on, and this module puts them right:

- **No resend.** aiohttp sends an idempotent request (PUT is one) a second time when the server
  drops the connection before answering. The access-code PUT makes a new pair each time, so a
  client middleware turns that drop into an error aiohttp does not retry.
- **Exceptions say whether the request may have left.** Only a failure to open the connection
  (refused, unreachable, DNS, TLS handshake, connect timeout) becomes `httpx.ConnectError` or
  `httpx.ConnectTimeout`, the classes `ConnectRetry` retries; everything after the connection was
  made (reset, disconnect, read timeout, a cut-short or malformed answer) becomes a class that is not
  retried.
- **httpx's pool and timeouts.** `max_connections` and the pool timeout are a semaphore here
  (`httpx.PoolTimeout`, nothing sent), the connect timeout bounds DNS, TCP and TLS together, the read
  timeout bounds each wait for data, idle connections expire after `keepalive_expiry` and at most
  `max_keepalive_connections` of them are kept. aiohttp has no write timeout: the gateway's requests
  (a PUT without a body, a token form under 1 KiB) go into the socket's send buffer at once, and the
  upstream call's whole-call deadline bounds them in any case.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
from aiohttp.client_middlewares import ClientHandlerType
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest, ClientResponse, ConnectionKey
from yarl import URL

_CHUNK_BYTES = 64 * 1024


class _MayHaveBeenSent(aiohttp.ClientError):
    """The connection was made and then lost: the request may have reached the server."""


async def _never_resend(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
    """aiohttp middleware: a lost connection ends the call instead of being retried by aiohttp.

    aiohttp retries idempotent methods on `ClientOSError`/`ServerDisconnectedError`; connect
    failures (`ClientConnectorError`, a `ClientOSError` too) happen before anything is written and
    pass through unchanged.
    """
    try:
        return await handler(request)
    except aiohttp.ClientConnectorError:
        raise
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as error:
        raise _MayHaveBeenSent(type(error).__name__) from error


def _httpx_error(error: Exception) -> httpx.TransportError:
    """The httpx exception for an aiohttp failure; only connect failures are of `NOT_SENT`'s classes."""
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout("timed out opening the connection")
    if isinstance(error, aiohttp.ClientConnectorError):
        return httpx.ConnectError("could not open the connection")
    if isinstance(error, (aiohttp.SocketTimeoutError, aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return httpx.ReadTimeout("timed out waiting for data")
    if isinstance(error, (_MayHaveBeenSent, aiohttp.ClientOSError, OSError)):
        return httpx.ReadError("the connection was lost")
    if isinstance(error, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError)):
        return httpx.RemoteProtocolError("the answer was cut short or malformed")
    return httpx.TransportError(f"transport failure ({type(error).__name__})")


class _Connector(aiohttp.TCPConnector):
    """aiohttp's TCP pool with httpx's cap on idle connections, which aiohttp does not have.

    `tests/test_upstream_transport.py` pins this to aiohttp's pool internals (`_release`, `_conns`).
    """

    def __init__(self, *, max_idle: int, **options: Any) -> None:
        super().__init__(**options)
        self._max_idle = max_idle

    def _release(self, key: ConnectionKey, protocol: ResponseHandler, *, should_close: bool = False) -> None:
        if not should_close and sum(len(idle) for idle in self._conns.values()) >= self._max_idle:
            should_close = True
        super()._release(key, protocol, should_close=should_close)


class _ResponseStream(httpx.AsyncByteStream):
    """The response body from aiohttp; closing it gives the connection back (or closes it) and frees the slot."""

    def __init__(self, response: ClientResponse, slots: asyncio.Semaphore) -> None:
        self._response = response
        self._slots: asyncio.Semaphore | None = slots

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(_CHUNK_BYTES):
                yield chunk
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            raise _httpx_error(error) from error

    async def aclose(self) -> None:
        # Nothing here waits, so it completes inside a cancelled scope too (the whole-call deadline).
        self._response.release()  # an unfinished body closes the connection rather than pooling it
        if self._slots is not None:
            self._slots.release()
            self._slots = None


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one aiohttp session, created on first use inside the running loop."""

    def __init__(self, *, verify: ssl.SSLContext, limits: httpx.Limits) -> None:
        self._ssl = verify
        self._limits = limits
        self._max_connections = limits.max_connections or 10_000
        self._slots = asyncio.Semaphore(self._max_connections)
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}

    def _open_session(self) -> aiohttp.ClientSession:
        expiry = self._limits.keepalive_expiry
        max_idle = self._limits.max_keepalive_connections
        max_idle = self._max_connections if max_idle is None else max_idle
        keepalive: dict[str, Any] = {"keepalive_timeout": expiry}
        if max_idle == 0 or expiry == 0:
            keepalive = {"force_close": True}
        connector = _Connector(max_idle=max_idle, limit=self._max_connections, ssl=self._ssl, **keepalive)
        return aiohttp.ClientSession(
            connector=connector,
            trust_env=False,  # no proxy variables or .netrc
            auto_decompress=False,  # httpx decodes, so its body cap counts decoded bytes
            cookie_jar=aiohttp.DummyCookieJar(),  # cookies, if any, are httpx's business
            skip_auto_headers=("Content-Type",),  # httpx sets one when there is a body; none otherwise
            middlewares=(_never_resend,),
        )

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        phases = request.extensions.get("timeout", {})
        connect, read = phases.get("connect"), phases.get("read")
        timeout = self._timeouts.get((connect, read))
        if timeout is None:
            # `connect` bounds DNS, TCP and TLS together (the pool wait is the semaphore's, before it).
            timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=read)
            self._timeouts[(connect, read)] = timeout
        return timeout

    async def _take_slot(self, request: httpx.Request) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot: taken without waiting
            return
        wait = request.extensions.get("timeout", {}).get("pool")
        try:
            async with asyncio.timeout(wait):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no pooled connection came free") from None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            self._session = self._open_session()
        body = await request.aread()
        await self._take_slot(request)
        try:
            response = await self._session.request(
                request.method,
                URL(str(request.url), encoded=True),  # exactly httpx's encoding, not requoted
                headers=request.headers.multi_items(),
                data=body or None,
                allow_redirects=False,
                timeout=self._timeout(request),
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            self._slots.release()
            raise _httpx_error(error) from error
        except BaseException:
            self._slots.release()
            raise
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1", "replace")
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_ResponseStream(response, self._slots),
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
