"""The bare baselines of `scripts/bench`: what one Starlette route under uvicorn costs.

- `POST /graphql` (scenario 1): reads the same JSON body the gateway gets, draws a pair with
  `secrets` and answers the shape of the gateway's success. No GraphQL, no store.
- `POST /proxy` (scenario 5's baseline): the same body, turned into the upstream's
  `PUT …/access-code` with httpx over the gateway's own transport (aiohttp's connection pool,
  `gateway.upstream.transport`) to `BENCH_UPSTREAM_URL`, and the upstream's JSON answered in the
  same shape: the same transport on both sides, so the difference is the gateway's own work.

    BENCH_UPSTREAM_URL=http://127.0.0.1:8081 uvicorn benchmarks.peers.plain:app --port 8000
"""

from __future__ import annotations

import os
import secrets
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.contract import ACCESS_CODE_PATH
from gateway.upstream.transport import AiohttpTransport


def transport_name() -> str:
    """The transport the proxy route uses (the gateway's)."""
    return "gateway.upstream.transport.AiohttpTransport"


def _transport() -> httpx.AsyncBaseTransport:
    return AiohttpTransport(verify=ssl.create_default_context(), limits=httpx.Limits(max_connections=64))


def _answer(credentials: dict[str, Any]) -> JSONResponse:
    return JSONResponse({"data": {"regenerateAccessCode": {"__typename": "BootstrapCredentials", **credentials}}})


async def _input(request: Request) -> dict[str, str]:
    body = await request.json()
    fields: dict[str, str] = body["variables"]["input"]
    return fields


async def regenerate(request: Request) -> JSONResponse:
    fields = await _input(request)
    return _answer(
        {"accessId": secrets.token_hex(3).upper(), "otp": secrets.token_hex(4).upper(), "id": fields["subjectId"]}
    )


async def proxy(request: Request) -> JSONResponse:
    fields = await _input(request)
    path = ACCESS_CODE_PATH.format(**{**fields, "mode": fields["mode"].lower()})
    client: httpx.AsyncClient = request.app.state.client
    response = await client.put(path, params={"mSubjectId": fields["mSubjectId"]})
    response.raise_for_status()
    body = response.json()
    return _answer({"accessId": body["accessId"], "otp": body["otp"], "id": body["id"]})


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    upstream = os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:9")
    async with httpx.AsyncClient(base_url=upstream, transport=_transport(), timeout=30) as client:
        app.state.client = client
        yield


app = Starlette(
    routes=[
        Route("/graphql", regenerate, methods=["POST"]),
        Route("/proxy", proxy, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ],
    lifespan=lifespan,
)
