"""An upstream's answer is capped twice, raw and inflated, as it arrives: a gzip bomb costs the
gateway no more memory than the cap (real loopback server, real pooled client)."""

from __future__ import annotations

import gzip
import json
import re
import zlib
from pathlib import Path

import anyio
import pytest
from starlette.requests import Request
from starlette.responses import Response

from gateway.domain import Caller, UpstreamFailure
from gateway.upstream.answers import MAX_BODY_BYTES
from tests.demo import READY_REF
from tests.upstream_servers import FAKE_ACCESS_ID, ScriptedUpstream, credentials_body, upstream_client
from tests.utils import run_server

pytestmark = pytest.mark.anyio

DTO = json.dumps(credentials_body()).encode()
BOMB = gzip.compress(b" " * (200 * 1024 * 1024), compresslevel=9)  # ~200 KB on the wire, 200 MiB inflated


def rss_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match
    return int(match.group(1)) * 1024


def encoded(body: bytes, encoding: str) -> Response:
    async def handle(request: Request) -> Response:
        return Response(body, headers={"Content-Encoding": encoding, "Content-Type": "application/json"})

    return handle  # type: ignore[return-value]


async def outcome(handler: object) -> object:
    upstream = ScriptedUpstream(handler=handler)  # type: ignore[arg-type]
    async with run_server(upstream.app) as url, upstream_client(url) as client:
        try:
            return await client.regenerate(READY_REF, Caller(request_id="req-body"))
        except UpstreamFailure as failure:
            return failure
        finally:
            assert upstream.seen[0].headers["accept-encoding"] == "gzip, deflate"


async def test_a_gzip_bomb_is_refused_without_inflating_it() -> None:
    assert len(BOMB) < MAX_BODY_BYTES
    upstream = ScriptedUpstream(handler=encoded(BOMB, "gzip"))  # type: ignore[arg-type]
    before = rss_bytes()
    failures: list[object] = []
    async with run_server(upstream.app) as url, upstream_client(url) as client:

        async def call(index: int) -> None:
            try:
                await client.regenerate(READY_REF, Caller(request_id=f"req-bomb-{index}"))
            except UpstreamFailure as failure:
                failures.append(failure)

        async with anyio.create_task_group() as tasks:
            for index in range(8):
                tasks.start_soon(call, index)
    grown = rss_bytes() - before
    assert len(failures) == 8
    assert all("over" in failure.reason for failure in failures)  # type: ignore[attr-defined]
    assert grown < 64 * 1024 * 1024, f"RSS grew by {grown >> 20} MiB for 8 bombs"


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        (gzip.compress(b'{"accessId": "TEST01", "id": "B1B8327AFAA6412287106192AB5984EF", "otp": "TESTOTP8"}'), "gzip"),
        (
            zlib.compress(b'{"accessId": "TEST01", "id": "B1B8327AFAA6412287106192AB5984EF", "otp": "TESTOTP8"}'),
            "deflate",
        ),
    ],
    ids=["gzip", "deflate"],
)
async def test_a_compressed_answer_within_the_cap_reads_as_usual(body: bytes, encoding: str) -> None:
    credentials = await outcome(encoded(body, encoding))
    assert getattr(credentials, "access_id", None) == FAKE_ACCESS_ID


@pytest.mark.parametrize(
    ("body", "encoding", "reason"),
    [
        (gzip.compress(b" " * (MAX_BODY_BYTES + 1)), "gzip", "over"),
        (b"not gzip at all", "gzip", "does not inflate"),
        (b"{}", "br", "did not ask for"),
    ],
    ids=["inflates-past-the-cap", "corrupt", "unasked-encoding"],
)
async def test_bodies_that_cannot_be_read_safely_are_upstream_failures(body: bytes, encoding: str, reason: str) -> None:
    failure = await outcome(encoded(body, encoding))
    assert isinstance(failure, UpstreamFailure)
    assert reason in failure.reason
