"""What reaches the app before any route, over real HTTP on loopback: bodies that are not a JSON
object, oversized headers, and an error nobody expected, each answered cleanly with its request id."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.requests import Request
from starlette.routing import Route

from gateway.app import create_app
from gateway.settings import Settings
from tests.utils import run_server

pytestmark = pytest.mark.anyio


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.replace(insecure_disable_auth=True))

    async def explode(request: Request) -> None:
        raise RuntimeError("an unexpected failure")

    app.router.routes.append(Route("/explode", explode))
    async with run_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        yield client


@pytest.mark.parametrize(
    "body",
    [
        b'"x"',
        b"5",
        b"null",
        b"true",
        b"\xff\xfe{}",
        b"[" * 30_000 + b"]" * 30_000,
        b'{"query": "{ gateway { version } }"',
    ],
    ids=["string", "number", "null", "boolean", "invalid-utf8", "nested-30000", "truncated"],
)
async def test_a_body_that_is_not_a_json_object_is_a_400_graphql_error(gateway: httpx.AsyncClient, body: bytes) -> None:
    response = await gateway.post("/graphql", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    [error] = response.json()["errors"]
    assert error["message"]


async def test_an_unexpected_error_is_a_500_with_the_request_id(
    gateway: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = await gateway.get("/explode", headers={"X-Request-ID": "trace-me-500"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "trace-me-500"
    assert "trace-me-500" in response.json()["error_description"]
    assert "an unexpected failure" not in response.text
    assert any("trace-me-500" in record.getMessage() for record in caplog.records)


async def test_oversized_headers_are_431_before_any_work(gateway: httpx.AsyncClient) -> None:
    response = await gateway.get("/healthz", headers={"X-Padding": "a" * (64 * 1024)})
    assert response.status_code == 431
    assert response.headers["x-request-id"]
    assert (await gateway.get("/healthz", headers={"X-Padding": "a" * 1024})).status_code == 200


async def test_a_graphql_answer_is_never_cached_and_json_is_json_in_any_case(gateway: httpx.AsyncClient) -> None:
    query = b'{"query": "{ gateway { version } }"}'
    for content_type in ("application/json", "Application/JSON", "application/JSON; charset=utf-8"):
        response = await gateway.post("/graphql", content=query, headers={"content-type": content_type})
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
    refused = await gateway.post("/graphql", content=query, headers={"content-type": "text/plain"})
    assert (refused.status_code, refused.headers["cache-control"]) == (415, "no-store")
