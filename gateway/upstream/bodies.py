"""Reading an answer's body with its size capped twice: the bytes on the wire and the bytes they
inflate to, both counted as they arrive.

httpx decodes a compressed body one received chunk at a time, and a chunk of gzip can inflate a
thousandfold before a cap on the decoded body sees it (a 200 KB answer of 200 MiB). Here the raw
bytes are inflated with zlib's `max_length`, so no more than the cap ever exists in memory.
The gateway asks only for what it can inflate this way (`ACCEPT_ENCODING`).
"""

from __future__ import annotations

import zlib

import httpx

from gateway.domain import UpstreamFailure

ACCEPT_ENCODING = "gzip, deflate"
"""What the gateway lets an upstream compress with (httpx would also offer br and zstd when installed)."""


def _inflater(encoding: str) -> zlib._Decompress | None:
    if encoding in {"", "identity"}:
        return None
    if encoding in {"gzip", "x-gzip"}:
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise UpstreamFailure(f"a body in an encoding the gateway did not ask for ({encoding[:20]})")


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The whole body, decoded; `UpstreamFailure` as soon as the raw or the decoded bytes pass `limit`."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    inflater = _inflater(encoding)
    body = bytearray()
    received = 0

    def too_large() -> UpstreamFailure:
        return UpstreamFailure(f"HTTP {response.status_code} with a body over {limit} bytes")

    async for chunk in response.aiter_raw():
        received += len(chunk)
        if received > limit:
            raise too_large()
        if inflater is None:
            body += chunk
        else:
            try:
                body += inflater.decompress(chunk, limit + 1 - len(body))
            except zlib.error:
                raise UpstreamFailure(f"HTTP {response.status_code} with a body that does not inflate") from None
            if inflater.unconsumed_tail:
                raise too_large()
        if len(body) > limit:
            raise too_large()
    if inflater is not None:
        body += inflater.flush(limit + 1 - len(body))
        if len(body) > limit:
            raise too_large()
    return bytes(body)
