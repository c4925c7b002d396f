"""The gateway's Prometheus metrics, defined once, and the `GET /metrics` endpoint.

The owners move them: the faces count each regeneration (GraphQL, REST) and bootstrap (device)
with its outcome and time, the upstream client each call's status and its breaker's state, the
KDF pool its hashes in flight, the OTP reserve its ready OTPs and misses, the store its group
commits. Label values are bounded: a face, a GraphQL union member's `__typename`, an HTTP status;
never a study, subject, device or caller.

With `gateway serve --workers N` (N > 1) each worker is its own process: `gateway serve` points
`PROMETHEUS_MULTIPROC_DIR` at a fresh temporary folder before the workers start, every worker
writes its values there (prometheus-client's multiprocess mode), and `/metrics`, whichever worker
answers, reads them all through a `MultiProcessCollector`.

Nothing here imports the gateway's faces (`lint-imports`).
"""

from __future__ import annotations

import functools
import os
from typing import Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

Face = Literal["graphql", "rest", "device"]

REQUESTS = Counter(
    "gateway_requests",
    "Regenerations (graphql, rest) and bootstraps (device) answered, by face and outcome: the union member's "
    "__typename (graphql) or the HTTP status (rest, device).",
    ["face", "outcome"],
)
REQUEST_DURATION = Histogram(
    "gateway_request_duration_seconds",
    "Time to answer a regeneration or a bootstrap, by face.",
    ["face"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 150.0),
)
UPSTREAM_REQUESTS = Counter(
    "gateway_upstream_requests",
    "Calls to the upstream access-code endpoint, by HTTP status (`error`: no answer).",
    ["status"],
)
UPSTREAM_CIRCUIT_OPEN = Gauge(
    "gateway_upstream_circuit_open",
    "1 while the upstream circuit breaker is open (failing fast), else 0 (the highest of the workers).",
    multiprocess_mode="livemax",
)
KDF_IN_FLIGHT = Gauge(
    "gateway_kdf_in_flight",
    "OTP hashes and checks running or waiting for a KDF worker.",
    multiprocess_mode="livesum",
)
OTP_RESERVE = Gauge(
    "gateway_otp_reserve",
    "New OTPs hashed ahead and ready in the local engine's reserve (the sum of the workers).",
    multiprocess_mode="livesum",
)
OTP_RESERVE_MISSES = Counter(
    "gateway_otp_reserve_misses",
    "Regenerations that found the local engine's OTP reserve empty and hashed an OTP of their own.",
)
STORE_COMMITS = Counter(
    "gateway_store_commits",
    "Transactions committed by the store's group-commit writer (each holds one or more units of work).",
)


def observe_request(face: Face, outcome: str, seconds: float) -> None:
    """Count one answered request of `face` with its (bounded) outcome and how long it took."""
    _requests(face, outcome).inc()
    _request_duration(face).observe(seconds)


@functools.cache
def _requests(face: Face, outcome: str) -> Counter:
    """The counter's child for these labels (prometheus-client's `labels` costs several times its `inc`)."""
    return REQUESTS.labels(face=face, outcome=outcome)


@functools.cache
def _request_duration(face: Face) -> Histogram:
    return REQUEST_DURATION.labels(face=face)


def registry() -> CollectorRegistry:
    """What `/metrics` shows: every worker's values in multiprocess mode, else this process's."""
    if not os.environ.get(MULTIPROC_DIR):
        return REGISTRY
    collected = CollectorRegistry()
    MultiProcessCollector(collected)  # type: ignore[no-untyped-call]  # registers itself on `collected`
    return collected


async def metrics(request: Request) -> Response:
    return Response(generate_latest(registry()), media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})


routes = [Route("/metrics", metrics, methods=["GET"])]
