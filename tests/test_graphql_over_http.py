"""GraphQL over HTTP: `application/graphql-response+json` when the client prefers it, with the
spec's status codes; `application/json` as before otherwise; 406 when the client accepts neither.

The negotiation is checked as a table, then each kind of answer over real HTTP in both media types.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.api.negotiation import GRAPHQL_RESPONSE_JSON, JSON, response_media_type
from gateway.app import create_app
from gateway.domain import Attempt, Caller, Credentials, DeviceRef
from tests.demo import REGENERATE, bearer, device_input
from tests.security import RecordingBackend, sqlite_settings
from tests.utils import run_server

pytestmark = pytest.mark.anyio

SPEC = "application/graphql-response+json; charset=utf-8"
APOLLO_CLIENT_4 = "application/graphql-response+json,application/json;q=0.9"
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        pytest.param(None, JSON, id="none"),
        pytest.param("", JSON, id="empty"),
        pytest.param("*/*", JSON, id="anything"),
        pytest.param("application/*", JSON, id="any-application"),
        pytest.param("application/json", JSON, id="json"),
        pytest.param("application/json; charset=utf-8", JSON, id="json-charset"),
        pytest.param(GRAPHQL_RESPONSE_JSON, GRAPHQL_RESPONSE_JSON, id="spec"),
        pytest.param(APOLLO_CLIENT_4, GRAPHQL_RESPONSE_JSON, id="apollo-client-4"),
        pytest.param("application/json;q=0.5, application/graphql-response+json", GRAPHQL_RESPONSE_JSON, id="q"),
        pytest.param("application/graphql-response+json;q=0.5, application/json", JSON, id="q-json"),
        pytest.param("application/graphql-response+json, application/json", JSON, id="tie"),
        pytest.param("application/graphql-response+json, */*;q=0.1", GRAPHQL_RESPONSE_JSON, id="spec-then-anything"),
        pytest.param("application/graphql-response+json;q=0, */*", JSON, id="spec-refused"),
        pytest.param(BROWSER, JSON, id="browser"),
        pytest.param("text/html", None, id="html"),
        pytest.param("application/xml", None, id="xml"),
        pytest.param("application/json;q=0", None, id="json-refused"),
        pytest.param("application/graphql-response+json;q=0, application/json;q=0", None, id="both-refused"),
        pytest.param("garbage", JSON, id="unreadable"),
    ],
)
def test_negotiation(accept: str | None, chosen: str | None) -> None:
    assert response_media_type(accept) == chosen
    assert response_media_type(accept) == chosen  # the remembered answer is the same


def test_long_headers_are_read_but_not_remembered() -> None:
    long = ", ".join(f"text/x-{n}" for n in range(100)) + ", application/graphql-response+json"
    assert response_media_type(long) == GRAPHQL_RESPONSE_JSON


class FailingBackend(RecordingBackend):
    """Fails the way a bug would once the mutation is executing."""

    async def regenerate(self, ref: DeviceRef, caller: Caller, attempt: Attempt) -> Credentials:
        raise RuntimeError("a bug")


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    settings = sqlite_settings(tmp_path_factory.mktemp("over-http"), rate_limit_device=0, rate_limit_caller=0)
    async with (
        run_server(create_app(settings, backend=FailingBackend())) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": bearer(settings)}) as client,
    ):
        yield client


async def post(client: httpx.AsyncClient, accept: str | None, body: object) -> httpx.Response:
    request = client.build_request("POST", "/graphql", content=json.dumps(body).encode())
    request.headers["content-type"] = "application/json"
    if accept is None:
        del request.headers["accept"]
    else:
        request.headers["accept"] = accept
    return await client.send(request)


VERSION = {"query": "{ gateway { version } }"}
INVALID_INPUT = {"query": REGENERATE, "variables": {"input": device_input(studyId="123")}}
FAILING = {"query": REGENERATE, "variables": {"input": device_input()}}

# (the request, the status with application/json, the status with application/graphql-response+json,
#  whether the body has a `data` entry with the latter)
ANSWERS: dict[str, tuple[object, int, int, bool]] = {
    "executed": (VERSION, 200, 200, True),
    "typed-error-member": (INVALID_INPUT, 200, 200, True),  # InvalidInputError: a result like any other
    "error-after-execution-began": (FAILING, 200, 200, True),  # data null, a masked error with a path
    "parse-error": ({"query": "{ gateway {"}, 200, 400, False),
    "validation-error": ({"query": "{ nope }"}, 200, 400, False),
    "variables-that-do-not-fit": ({"query": REGENERATE, "variables": {"input": {"studyId": 5}}}, 200, 400, False),
    "unknown-operation-name": ({"query": "query A { gateway { version } }", "operationName": "B"}, 400, 400, False),
    "no-query": ({"variables": {}}, 400, 400, False),
    "not-an-object": ("x", 400, 400, False),
    "batch": ([VERSION, VERSION], 400, 400, False),
    "bad-variables": ({"query": "{ gateway { version } }", "variables": [1]}, 400, 400, False),
}


@pytest.mark.parametrize("case", list(ANSWERS))
async def test_status_codes_in_both_media_types(client: httpx.AsyncClient, case: str) -> None:
    body, json_status, spec_status, has_data = ANSWERS[case]
    legacy = await post(client, "application/json", body)
    assert (legacy.status_code, legacy.headers["content-type"]) == (json_status, JSON)
    if json_status == 200:
        assert "data" in legacy.json()  # application/json as before: data null beside request errors
    spec = await post(client, APOLLO_CLIENT_4, body)
    assert (spec.status_code, spec.headers["content-type"]) == (spec_status, SPEC)
    assert ("data" in spec.json()) is has_data
    if spec_status != 200:
        assert spec.json()["errors"]
    assert spec.headers["cache-control"] == "no-store"


async def test_error_after_execution_began_keeps_data_null(client: httpx.AsyncClient) -> None:
    spec = await post(client, GRAPHQL_RESPONSE_JSON, FAILING)
    body = spec.json()
    assert body["data"] is None
    assert body["errors"][0]["path"] == ["regenerateAccessCode"]


async def test_a_mutation_by_get_is_405_with_the_spec(client: httpx.AsyncClient) -> None:
    params = {"query": "mutation { __typename }"}
    spec = await client.get("/graphql", params=params, headers={"accept": GRAPHQL_RESPONSE_JSON})
    assert (spec.status_code, spec.headers["allow"], spec.headers["content-type"]) == (405, "POST", SPEC)
    legacy = await client.get("/graphql", params=params, headers={"accept": "application/json"})
    assert legacy.status_code == 400  # as before


async def test_a_get_query_answers_in_the_spec_media_type(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphql", params=VERSION, headers={"accept": GRAPHQL_RESPONSE_JSON})
    assert (response.status_code, response.headers["content-type"]) == (200, SPEC)
    assert response.json() == {"data": {"gateway": {"version": "0.1.0"}}}


@pytest.mark.parametrize("accept", [None, "*/*", BROWSER])
async def test_without_a_preference_the_answer_is_json(client: httpx.AsyncClient, accept: str | None) -> None:
    response = await post(client, accept, VERSION)
    assert (response.status_code, response.headers["content-type"]) == (200, JSON)


@pytest.mark.parametrize("accept", ["text/html", "application/xml", "application/json;q=0"])
async def test_a_client_that_accepts_neither_gets_406(client: httpx.AsyncClient, accept: str) -> None:
    response = await post(client, accept, VERSION)
    assert response.status_code == 406
    assert response.json()["errors"][0]["message"] == (
        "GraphQL responses are application/graphql-response+json or application/json"
    )
    by_get = await client.get("/graphql", params=VERSION, headers={"accept": accept})
    assert by_get.status_code == 406


async def test_graphiqls_page_is_not_negotiated(client: httpx.AsyncClient) -> None:
    page = await client.get("/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    ("content_type", "status"),
    [pytest.param("text/plain", 415, id="csrf-content-type"), pytest.param("application/json", 400, id="bad-json")],
)
async def test_body_errors_take_the_spec_media_type(client: httpx.AsyncClient, content_type: str, status: int) -> None:
    headers: dict[str, Any] = {"content-type": content_type, "accept": GRAPHQL_RESPONSE_JSON}
    response = await client.post("/graphql", content=b"{not json", headers=headers)
    assert (response.status_code, response.headers["content-type"]) == (status, SPEC)
    assert "data" not in response.json()


async def test_a_persisted_query_miss_is_404_with_the_spec_and_200_with_json(client: httpx.AsyncClient) -> None:
    """An answer without `data` in graphql-response+json must be 4xx: 404, as Apollo Router answers
    it; application/json keeps Apollo Server's 200, which Apollo's link expects."""
    miss = {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "0" * 64}}}
    spec = await post(client, APOLLO_CLIENT_4, miss)
    assert (spec.status_code, spec.headers["content-type"]) == (404, SPEC)
    assert "data" not in spec.json()
    assert spec.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
    legacy = await post(client, "application/json", miss)
    assert (legacy.status_code, legacy.headers["content-type"]) == (200, JSON)
    assert legacy.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"


async def test_persisted_queries_not_supported_is_400_with_the_spec_and_200_with_json(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path, apq=False)
    not_supported = {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "0" * 64}}}
    async with (
        run_server(create_app(settings, backend=RecordingBackend())) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": bearer(settings)}) as client,
    ):
        spec = await post(client, APOLLO_CLIENT_4, not_supported)
        legacy = await post(client, "application/json", not_supported)
    assert (spec.status_code, spec.headers["content-type"]) == (400, SPEC)
    assert "data" not in spec.json()
    assert spec.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_SUPPORTED"
    assert (legacy.status_code, legacy.headers["content-type"]) == (200, JSON)
    assert legacy.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_SUPPORTED"
