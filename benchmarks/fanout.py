"""The fragment fan-out line: a small document whose fragments spread each other twice.

`query Q { ...F0 }` with `fragment F{i} on Query { ...F{i+1} ...F{i+1} }` for i < n and
`fragment F{n} on Query { __typename }` reaches 2^n paths from n + 1 fragments. Sent once to a
gateway, it must be refused (too deep), quickly.
"""

from __future__ import annotations

import json
import time

import httpx

from benchmarks.model import FanoutResult


def document(levels: int) -> str:
    spreads = [f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels)]
    return "\n".join(["query Q { ...F0 }", *spreads, f"fragment F{levels} on Query {{ __typename }}"])


def _refused(response: httpx.Response) -> tuple[bool, str]:
    """A refusal: a 4xx, or top-level errors and no data."""
    try:
        body = response.json()
    except json.JSONDecodeError:
        return response.is_client_error, f"HTTP {response.status_code}, not JSON"
    errors = body.get("errors") if isinstance(body, dict) else None
    message = errors[0].get("message", "")[:120] if errors else ""
    refused = response.is_client_error or (bool(errors) and not body.get("data"))
    return refused, f"HTTP {response.status_code}: {message or 'no errors'}"


def time_refusal(url: str, levels: int, timeout: float) -> FanoutResult:
    """POST the document with `levels` fan-out levels once, on a connection already open (a GET of
    /healthz opens it): how long until the answer, and was it a refusal."""
    text = document(levels)
    size = len(text.encode())
    with httpx.Client(timeout=timeout) as client:
        try:
            client.get(url.rsplit("/", 1)[0] + "/healthz")
            started = time.perf_counter()
            response = client.post(url, json={"query": text})
        except httpx.TimeoutException:
            return FanoutResult(levels, size, None, False, f"no answer within {timeout:g} s")
        except httpx.HTTPError as error:
            return FanoutResult(levels, size, None, False, f"{type(error).__name__}: {error}")
        elapsed_ms = (time.perf_counter() - started) * 1000
    refused, detail = _refused(response)
    return FanoutResult(levels, size, elapsed_ms, refused, detail)
