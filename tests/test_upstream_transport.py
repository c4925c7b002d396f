"""The aiohttp transport under the upstream client, against real loopback sockets.

What `ConnectRetry` may retry depends on the exception class alone: only a failure to open the
connection may be `httpx.ConnectError`/`httpx.ConnectTimeout` (`NOT_SENT`); anything after the
request may have been written must be another class, and aiohttp must not resend on its own.
The pool, timeouts and keep-alive settings of `upstream_http_client` are checked here too.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import ByteStream, SocketAttribute, SocketStream
from anyio.streams.tls import TLSStream
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.upstream import upstream_http_client
from gateway.upstream.resilience import NOT_SENT
from tests.upstream_servers import RawServer, raw_server, read_head, reset, serve_scripted, upstream_settings
from tests.utils import free_port

pytestmark = pytest.mark.anyio

PATH = "/ec-ors-svc/rest/v1.0/studies/S1/active/subjects/A%2FB/devices/D.1/access-code"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@asynccontextmanager
async def client(url: str, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with upstream_http_client(upstream_settings(url, **overrides).upstream) as http:
        yield http


async def put_error(url: str, **overrides: Any) -> tuple[httpx.HTTPError, float]:
    """The exception one PUT raises, and how long it took."""
    async with client(url, **overrides) as http:
        started = time.perf_counter()
        with pytest.raises(httpx.HTTPError) as caught:
            await http.put(PATH)
    return caught.value, time.perf_counter() - started


def assert_may_have_been_sent(error: httpx.HTTPError) -> None:
    assert isinstance(error, httpx.TransportError)
    assert not isinstance(error, NOT_SENT), f"{type(error).__name__} would be retried"


@asynccontextmanager
async def keep_alive_server(
    answer: Callable[[SocketStream, int], Awaitable[bool]],
) -> AsyncIterator[RawServer]:
    """A raw server that keeps each connection open: `answer(stream, n)` for its n-th request (from 1)
    answers it and says whether to read another."""

    async def serve(stream: SocketStream) -> None:
        n = 1
        while await answer(stream, n):
            head = await read_head(stream)
            if not head.endswith(b"\r\n\r\n"):
                return
            server.requests.append(head)
            n += 1

    async with raw_server(serve) as server:
        yield server


async def ok_forever(stream: SocketStream, n: int) -> bool:
    await stream.send(OK)
    return True


async def never_answer(stream: SocketStream) -> None:
    await anyio.sleep(30)


# ---------------------------------------------------------------------------------------------
# Failures to connect: nothing was sent, and the class says so.


async def test_a_refused_connection_is_connect_error() -> None:
    error, elapsed = await put_error(f"http://127.0.0.1:{free_port()}")
    assert type(error) is httpx.ConnectError
    assert isinstance(error, NOT_SENT)
    assert elapsed < 1


@contextmanager
def full_backlog() -> Iterator[str]:
    """A listening port whose accept queue is full: the kernel drops further SYNs, so connecting hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                fillers.append(filler)
                with suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            for filler in fillers:
                filler.close()


async def test_a_tcp_connect_timeout_is_connect_timeout_after_the_connect_timeout() -> None:
    with full_backlog() as url:
        error, elapsed = await put_error(url, upstream_connect_timeout_seconds=0.3)
    assert type(error) is httpx.ConnectTimeout
    assert isinstance(error, NOT_SENT)
    assert 0.25 <= elapsed < 2


async def test_a_stalled_tls_handshake_is_connect_timeout_and_nothing_is_read() -> None:
    async with raw_server(never_answer, read_request=False) as server:
        url = server.url.replace("http://", "https://")
        error, elapsed = await put_error(url, upstream_connect_timeout_seconds=0.3)
    assert type(error) is httpx.ConnectTimeout
    assert 0.25 <= elapsed < 2
    assert server.requests == []


# ---------------------------------------------------------------------------------------------
# After the request may have been written: never a NOT_SENT class, never a second send.


async def test_no_answer_within_the_read_timeout_is_read_timeout_and_one_request() -> None:
    async with raw_server(never_answer) as server:
        error, elapsed = await put_error(server.url, upstream_read_timeout_seconds=0.3)
    assert type(error) is httpx.ReadTimeout
    assert_may_have_been_sent(error)
    assert 0.25 <= elapsed < 2
    assert (server.connections, len(server.requests)) == (1, 1)


async def test_a_body_that_stalls_past_the_read_timeout_is_read_timeout() -> None:
    async def stall_mid_body(stream: SocketStream) -> None:
        await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
        await anyio.sleep(30)

    async with raw_server(stall_mid_body) as server:
        error, elapsed = await put_error(server.url, upstream_read_timeout_seconds=0.3)
    assert type(error) is httpx.ReadTimeout
    assert 0.25 <= elapsed < 2
    assert server.connections == 1


@pytest.mark.parametrize(
    "respond",
    [
        pytest.param(reset, id="reset"),
        pytest.param(lambda stream: stream.aclose(), id="closed-without-answer"),
    ],
)
async def test_a_connection_lost_before_the_answer_is_not_resent(
    respond: Callable[[SocketStream], Awaitable[None]],
) -> None:
    """aiohttp resends an idempotent method (PUT is one) after such a loss; the transport must not."""
    async with raw_server(respond) as server:
        error, _ = await put_error(server.url)
    assert_may_have_been_sent(error)
    assert (server.connections, len(server.requests)) == (1, 1)


async def test_a_reused_connection_reset_after_the_request_is_not_resent() -> None:
    """The case aiohttp's own retry is for: a pooled connection lost once the request is on it."""

    async def answer_once_then_reset(stream: SocketStream, n: int) -> bool:
        if n == 1:
            await stream.send(OK)
            return True
        await reset(stream)
        return False

    async with keep_alive_server(answer_once_then_reset) as server, client(server.url) as http:
        assert (await http.put(PATH)).status_code == 200
        with pytest.raises(httpx.HTTPError) as caught:
            await http.put(PATH)
    assert_may_have_been_sent(caught.value)
    assert (server.connections, len(server.requests)) == (1, 2)


async def test_the_request_goes_out_as_httpx_built_it() -> None:
    async with raw_server(lambda stream: stream.send(OK)) as server, client(server.url) as http:
        await http.put(PATH, params={"mSubjectId": "M 1"}, headers={"X-Request-ID": "req-1"})
    (head,) = server.requests
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == f"PUT {PATH}?mSubjectId=M+1 HTTP/1.1"  # %2F kept, not requoted
    names = [line.split(":", 1)[0].lower() for line in lines[1:] if line]
    assert len(names) == len(set(names))  # nothing doubled by aiohttp's own defaults
    assert "content-type" not in names
    assert "x-request-id: req-1" in (line.lower() for line in lines)


async def test_proxy_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, closed)
    async with serve_scripted() as (upstream, url), client(url) as http:
        assert (await http.put(PATH)).status_code == 200
    assert len(upstream.seen) == 1


# ---------------------------------------------------------------------------------------------
# The pool: its limit and timeout, slots given back on cancellation, keep-alive expiry and cap.


async def test_no_free_connection_within_the_pool_timeout_is_pool_timeout_and_nothing_sent() -> None:
    async with (
        raw_server(never_answer) as server,
        client(
            server.url, upstream_max_connections=1, upstream_max_concurrency=1, upstream_pool_timeout_seconds=0.2
        ) as http,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(http.put, PATH)
        with anyio.fail_after(2):
            while len(server.requests) < 1:  # noqa: ASYNC110 (the raw server offers no event)
                await anyio.sleep(0.01)
        started = time.perf_counter()
        with pytest.raises(httpx.PoolTimeout):
            await http.put(PATH)
        assert 0.15 <= time.perf_counter() - started < 2
        tasks.cancel_scope.cancel()
    assert (server.connections, len(server.requests)) == (1, 1)


async def test_a_call_cancelled_waiting_or_reading_gives_its_connection_back() -> None:
    """The whole-call deadline cancels the call; its pool slot must not leak."""
    calls = 0

    async def partial_answer_then_silence(stream: SocketStream) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")  # the body never completes
        await anyio.sleep(30)

    async with (
        raw_server(partial_answer_then_silence) as server,
        client(
            server.url, upstream_max_connections=1, upstream_max_concurrency=1, upstream_pool_timeout_seconds=0.2
        ) as http,
    ):
        with anyio.move_on_after(0.2):  # cancelled while reading the body
            async with http.stream("PUT", PATH) as response:
                async for _ in response.aiter_bytes():
                    pass
        for _ in range(2):
            with anyio.move_on_after(0.2):  # cancelled while waiting for the head; a leaked slot: PoolTimeout
                await http.put(PATH)
    assert (server.connections, len(server.requests)) == (3, 3)


async def count_connections(**overrides: Any) -> int:
    async with keep_alive_server(ok_forever) as server, client(server.url, **overrides) as http:
        assert (await http.put(PATH)).status_code == 200
        await anyio.sleep(0.5)
        assert (await http.put(PATH)).status_code == 200
    return server.connections


async def test_an_idle_connection_is_reused_within_the_keepalive_expiry() -> None:
    assert await count_connections(upstream_keepalive_expiry_seconds=5.0) == 1


async def test_an_idle_connection_is_not_reused_after_the_keepalive_expiry() -> None:
    assert await count_connections(upstream_keepalive_expiry_seconds=0.2) == 2


async def test_no_keepalive_connections_means_a_new_connection_each_time() -> None:
    assert await count_connections(upstream_max_keepalive_connections=0) == 2


async def test_at_most_max_keepalive_connections_stay_idle() -> None:
    """Three at once need three connections; only one is kept, so the next three open two more."""

    async def slow_ok(stream: SocketStream, n: int) -> bool:
        await anyio.sleep(0.2)
        await stream.send(OK)
        return True

    async def three_at_once(http: httpx.AsyncClient) -> None:
        async with anyio.create_task_group() as tasks:
            for _ in range(3):
                tasks.start_soon(http.put, PATH)

    async with (
        keep_alive_server(slow_ok) as server,
        client(server.url, upstream_max_keepalive_connections=1) as http,
    ):
        await three_at_once(http)
        assert server.connections == 3
        await three_at_once(http)
    assert (server.connections, len(server.requests)) == (5, 6)


# ---------------------------------------------------------------------------------------------
# TLS: verified against GATEWAY_UPSTREAM_CA_FILE; an unknown certificate is a failure to connect.


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (test-only) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway-test-upstream")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "upstream.pem", folder / "upstream.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


async def read_tls_head(stream: ByteStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    return data


@asynccontextmanager
async def tls_server(cert_file: Path, key_file: Path) -> AsyncIterator[RawServer]:
    """An HTTPS server on loopback answering 200 once per connection; counts connections and requests."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    server = RawServer(url=f"https://127.0.0.1:{listener.extra(SocketAttribute.local_port)}")

    async def handle(stream: SocketStream) -> None:
        server.connections += 1
        async with stream:
            try:
                async with await TLSStream.wrap(stream, server_side=True, ssl_context=context) as tls:
                    server.requests.append(await read_tls_head(tls))
                    await tls.send(OK)
            except (anyio.BrokenResourceError, anyio.EndOfStream, ssl.SSLError, OSError):
                pass

    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, handle)
        try:
            yield server
        finally:
            tasks.cancel_scope.cancel()


async def test_tls_is_verified_against_the_configured_ca_file(tls_files: tuple[Path, Path]) -> None:
    cert_file, key_file = tls_files
    async with tls_server(cert_file, key_file) as server, client(server.url, upstream_ca_file=str(cert_file)) as http:
        assert (await http.put(PATH)).status_code == 200
    assert len(server.requests) == 1


async def test_an_unknown_certificate_is_connect_error_and_nothing_is_sent(tls_files: tuple[Path, Path]) -> None:
    async with tls_server(*tls_files) as server:
        error, _ = await put_error(server.url)  # certifi's bundle does not know the test certificate
    assert type(error) is httpx.ConnectError
    assert server.connections == 1
    assert server.requests == []
