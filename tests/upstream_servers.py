"""Stand-ins for Clinical One that the upstream tests control, served on real loopback sockets.

- `ScriptedUpstream`: a small Starlette app (served by `tests.utils.run_server`) that records every
  request it receives and answers as the test scripts it; it also plays the OAuth2 token endpoint.
- `raw_server`: a bare TCP server for what no well-behaved HTTP server does (resets, short bodies).
- `upstream_client`: an `UpstreamClient` over a real pooled httpx client, with test-sized settings.

Tokens and OTPs here are obviously fake test values.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import contract
from gateway.contract import BootStrapCredResponseDto, ORSResponse
from gateway.domain import Credentials
from gateway.settings import Settings
from gateway.upstream import UpstreamClient, upstream_http_client
from gateway.upstream.resilience import MonotonicClock, Sleep
from tests.utils import run_server

TOKEN_PATH = "/oauth2/v1/token"
FAKE_OTP = "TESTOTP8"
FAKE_ACCESS_ID = "TEST01"
DEVICE_INSTANCE = "B1B8327AFAA6412287106192AB5984EF"
Handler = Callable[[Request], Awaitable[Response]]


def credentials_body(*, wrapped: bool = False, status: str = "Success") -> BootStrapCredResponseDto | ORSResponse:
    """The fake credentials, bare (as documented) or wrapped in an `ORSResponse` (as other services send)."""
    dto = contract.credentials_body(
        Credentials(access_id=FAKE_ACCESS_ID, otp=FAKE_OTP, device_id=DEVICE_INSTANCE, expires_at=None)
    )
    return contract.wrapped(dto, status) if wrapped else dto


def ors_error(code: Any, message: str | None, details: Any = None) -> ORSResponse:
    """An `ORSResponse` error body; `code` may be of any type, since the tests also send what the contract would not."""
    return contract.error_body(code, message, details)


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    """A handler that always answers `status` with `body` as JSON (or as text when it is a str)."""

    async def handle(request: Request) -> Response:
        if isinstance(body, str):
            return Response(body, status_code=status, headers=headers, media_type="text/html")
        return JSONResponse(body, status_code=status, headers=headers)

    return handle


@dataclass(frozen=True)
class Seen:
    """A request the stand-in received, as it came on the wire."""

    method: str
    raw_path: str
    query: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class ScriptedUpstream:
    """Records every request; answers access-code calls with `handler`, token calls with `token_handler`."""

    handler: Handler = field(default_factory=lambda: answer(200, credentials_body()))
    token_handler: Handler | None = None
    seen: list[Seen] = field(default_factory=list)
    token_requests: list[Seen] = field(default_factory=list)
    issued_tokens: int = 0
    token_lifetime: int = 600
    release: anyio.Event = field(default_factory=anyio.Event)
    """Set when the test ends: handlers that hang wait on it, so the server can stop promptly."""

    def __post_init__(self) -> None:
        self.app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=["GET", "PUT", "POST"])])

    async def _endpoint(self, request: Request) -> Response:
        seen = Seen(
            method=request.method,
            raw_path=request.scope["raw_path"].decode("latin-1"),
            query=request.scope["query_string"].decode("latin-1"),
            headers={name.lower(): value for name, value in request.headers.items()},
            body=await request.body(),
        )
        if request.url.path == TOKEN_PATH:
            self.token_requests.append(seen)
            return await (self.token_handler or self.issue_token)(request)
        self.seen.append(seen)
        return await self.handler(request)

    async def issue_token(self, request: Request) -> Response:
        """The default token endpoint: test-token-1, test-token-2, … each living `token_lifetime` seconds."""
        self.issued_tokens += 1
        return JSONResponse(
            {
                "access_token": f"test-token-{self.issued_tokens}",
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
            }
        )

    async def hang(self, request: Request) -> Response:
        """A handler for a stuck upstream: answers only when the test releases it (or after 5 s)."""
        with anyio.move_on_after(5):
            await self.release.wait()
        return JSONResponse(credentials_body())


@asynccontextmanager
async def serve_scripted(upstream: ScriptedUpstream | None = None) -> AsyncIterator[tuple[ScriptedUpstream, str]]:
    upstream = upstream or ScriptedUpstream()
    async with run_server(upstream.app) as url:
        try:
            yield upstream, url
        finally:
            upstream.release.set()


@dataclass
class RawServer:
    url: str
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)


async def read_head(stream: SocketStream) -> bytes:
    """The request line and headers (the access-code PUT has no body), or what came before EOF."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        try:
            data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            break
    return data


async def reset(stream: SocketStream) -> None:
    """Close with a TCP RST instead of a FIN."""
    sock = stream.extra(SocketAttribute.raw_socket)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


@asynccontextmanager
async def raw_server(
    respond: Callable[[SocketStream], Awaitable[None]], *, read_request: bool = True
) -> AsyncIterator[RawServer]:
    """A TCP server on a free loopback port: for each connection, (read the request head,) then `respond`."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    server = RawServer(url=f"http://127.0.0.1:{port}")

    async def handle(stream: SocketStream) -> None:
        server.connections += 1
        try:
            if read_request:
                head = await read_head(stream)
                if head.endswith(b"\r\n\r\n"):
                    server.requests.append(head)
            await respond(stream)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            await stream.aclose()

    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, handle)
        try:
            yield server
        finally:
            tasks.cancel_scope.cancel()


class Ticker:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SleepRecorder:
    """An injected `sleep` that records the delays and does not wait."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def upstream_settings(url: str, **overrides: Any) -> Settings:
    """Upstream-mode settings with test-sized timeouts; `overrides` are `Settings` fields."""
    values: dict[str, Any] = {
        "backend": "upstream",
        "upstream_url": url,
        "upstream_connect_timeout_seconds": 2.0,
        "upstream_read_timeout_seconds": 5.0,
        "upstream_retry_backoff_seconds": 0.01,
    }
    values.update(overrides)
    return Settings().replace(**values)


@asynccontextmanager
async def upstream_client(
    url: str,
    *,
    clock: MonotonicClock | None = None,
    sleep: Sleep | None = None,
    **overrides: Any,
) -> AsyncIterator[UpstreamClient]:
    """An `UpstreamClient` for `url`, over its own pooled httpx client (closed afterwards)."""
    settings = upstream_settings(url, **overrides)
    options: dict[str, Any] = {}
    if clock is not None:
        options["clock"] = clock
    if sleep is not None:
        options["sleep"] = sleep
    async with upstream_http_client(settings.upstream) as http:
        yield UpstreamClient.from_settings(settings.upstream, http, **options)
