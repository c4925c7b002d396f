"""Automatic persisted queries in Apollo's protocol, over real HTTP.

A hash alone misses (`PERSISTED_QUERY_NOT_FOUND`), the hash with its text registers it, the hash
alone then runs it (POST and GET); a hash that is not its text's is refused; `GATEWAY_APQ=false`
answers `PERSISTED_QUERY_NOT_SUPPORTED`; with trusted documents nothing registers and every refusal
is GraphQL JSON; the cache keeps at most `GATEWAY_APQ_CACHE_SIZE` documents and `CACHE_BYTES` of
text, and refuses to register a document over `DOCUMENT_BYTES`. `apollo_link` plays
Apollo Client's persisted-query link against the gateway.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.api.guards import document_hash
from gateway.api.persisted import CACHE_BYTES, DOCUMENT_BYTES, PersistedQueryCache
from gateway.api.schema import GatewaySchema
from gateway.api.view import GraphQLView
from gateway.app import create_app
from tests.demo import REGENERATE, bearer, device_input
from tests.security import RecordingBackend, sqlite_settings
from tests.utils import run_server

pytestmark = pytest.mark.anyio

VERSION = "{ gateway { version } }"
BACKEND = "{ gateway { backend } }"
MUTATION = REGENERATE
NOT_FOUND = {"errors": [{"message": "PersistedQueryNotFound", "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"}}]}
NOT_SUPPORTED = {
    "errors": [{"message": "PersistedQueryNotSupported", "extensions": {"code": "PERSISTED_QUERY_NOT_SUPPORTED"}}]
}


def extensions(document: str, *, sha: str | None = None, version: object = 1) -> dict[str, Any]:
    return {"persistedQuery": {"version": version, "sha256Hash": sha or document_hash(document)}}


@dataclass
class Gateway:
    client: httpx.AsyncClient
    backend: RecordingBackend
    schema: GatewaySchema

    async def by_hash(self, document: str, **extra: Any) -> httpx.Response:
        return await self.client.post("/graphql", json={"extensions": extensions(document), **extra})

    async def register(self, document: str, **extra: Any) -> httpx.Response:
        return await self.client.post("/graphql", json={"query": document, "extensions": extensions(document), **extra})

    async def by_get(self, document: str, accept: str = "*/*", **params: str) -> httpx.Response:
        query = {"extensions": json.dumps(extensions(document)), **params}
        return await self.client.get("/graphql", params=query, headers={"accept": accept})


def schema_of(app: Starlette) -> GatewaySchema:
    for route in app.routes:
        if isinstance(route, Route) and isinstance(route.endpoint, GraphQLView):
            assert isinstance(route.endpoint.schema, GatewaySchema)
            return route.endpoint.schema
    raise AssertionError("no /graphql route")


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {}


@asynccontextmanager
async def serve(tmp_path: Path, **overrides: Any) -> AsyncIterator[Gateway]:
    settings = sqlite_settings(tmp_path, rate_limit_device=0, rate_limit_caller=0, **overrides)
    backend = RecordingBackend()
    app = create_app(settings, backend=backend)
    async with (
        run_server(app) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": bearer(settings)}) as client,
    ):
        yield Gateway(client, backend, schema_of(app))


@pytest.fixture
async def gateway(tmp_path: Path, overrides: dict[str, Any]) -> AsyncIterator[Gateway]:
    async with serve(tmp_path, **overrides) as gateway:
        yield gateway


# ---------------------------------------------------------------------------------------------
# Apollo's protocol


async def test_a_miss_then_registration_then_hits(gateway: Gateway) -> None:
    miss = await gateway.by_hash(VERSION)
    assert (miss.status_code, miss.json()) == (200, NOT_FOUND)  # what Apollo Server 4 and 5 answer
    assert miss.headers["content-type"] == "application/json"
    registered = await gateway.register(VERSION)
    assert registered.json() == {"data": {"gateway": {"version": "0.1.0"}}}
    hit = await gateway.by_hash(VERSION)
    assert (hit.status_code, hit.json()) == (200, {"data": {"gateway": {"version": "0.1.0"}}})
    for accept in ("application/json", "*/*"):  # */* is what Apollo Client 3 sends: not GraphiQL's page
        by_get = await gateway.by_get(VERSION, accept=accept)
        assert (by_get.status_code, by_get.json()) == (200, {"data": {"gateway": {"version": "0.1.0"}}})


async def test_a_hit_skips_parsing(gateway: Gateway) -> None:
    await gateway.register(BACKEND)
    parsed = gateway.schema.documents.info().misses
    for _ in range(3):
        assert (await gateway.by_hash(BACKEND)).json() == {"data": {"gateway": {"backend": "LOCAL"}}}
    assert gateway.schema.documents.info().misses == parsed


async def test_a_mutation_registers_and_runs_by_hash_but_never_by_get(gateway: Gateway) -> None:
    variables = {"input": device_input()}
    assert (await gateway.by_hash(MUTATION, variables=variables)).json() == NOT_FOUND
    assert gateway.backend.callers == []
    registered = await gateway.register(MUTATION, variables=variables)
    assert registered.json()["data"]["regenerateAccessCode"]["__typename"] == "BootstrapCredentials"
    hit = await gateway.by_hash(MUTATION, variables=variables)
    assert hit.json()["data"]["regenerateAccessCode"]["__typename"] == "BootstrapCredentials"
    assert len(gateway.backend.callers) == 2
    by_get = await gateway.by_get(MUTATION, accept="application/json", variables=json.dumps(variables))
    assert by_get.status_code == 400
    assert "mutations are not allowed when using GET" in by_get.json()["errors"][0]["message"]
    assert len(gateway.backend.callers) == 2


async def test_a_hash_that_is_not_its_documents_is_refused(gateway: Gateway) -> None:
    hijack = {"query": BACKEND, "extensions": extensions(VERSION)}
    refused = await gateway.client.post("/graphql", json=hijack)
    assert refused.status_code == 400
    assert refused.json() == {
        "errors": [
            {"message": "provided sha does not match query", "extensions": {"code": "PERSISTED_QUERY_HASH_MISMATCH"}}
        ]
    }
    assert (await gateway.by_hash(VERSION)).json() == NOT_FOUND  # nothing registered under the hash
    upper = {"query": VERSION, "extensions": extensions(VERSION, sha=document_hash(VERSION).upper())}
    assert (await gateway.client.post("/graphql", json=upper)).status_code == 400  # lowercase hex, exactly


@pytest.mark.parametrize(
    ("persisted", "message"),
    [
        pytest.param(extensions(VERSION, version=2), "Unsupported persisted query version", id="version-2"),
        pytest.param({"persistedQuery": "abc"}, "Unsupported persisted query version", id="not-an-object"),
        pytest.param(
            {"persistedQuery": {"version": 1, "sha256Hash": 5}},
            "extensions.persistedQuery.sha256Hash must be a string",
            id="hash-not-a-string",
        ),
    ],
)
async def test_malformed_persisted_queries_are_bad_requests(
    gateway: Gateway, persisted: dict[str, Any], message: str
) -> None:
    response = await gateway.client.post("/graphql", json={"query": VERSION, "extensions": persisted})
    assert response.status_code == 400
    assert response.json() == {"errors": [{"message": message, "extensions": {"code": "BAD_REQUEST"}}]}


async def test_an_invalid_document_is_answered_but_not_registered(gateway: Gateway) -> None:
    invalid = "{ gateway { nope } }"
    answered = await gateway.register(invalid)
    assert answered.json()["errors"][0]["message"] == "Cannot query field 'nope' on type 'GatewayInfo'."
    assert (await gateway.by_hash(invalid)).json() == NOT_FOUND


async def test_a_hash_only_get_needs_a_token(gateway: Gateway) -> None:
    await gateway.register(VERSION)
    query = {"extensions": json.dumps(extensions(VERSION))}
    for accept in ("*/*", "text/html", "application/json"):
        anonymous = await gateway.client.get("/graphql", params=query, headers={"accept": accept, "authorization": ""})
        assert anonymous.status_code == 401


@pytest.mark.parametrize("overrides", [{"apq_cache_size": 2}])
async def test_the_cache_keeps_the_most_recently_used(gateway: Gateway) -> None:
    first, second, third = VERSION, BACKEND, "{ gateway { otpLifetimeSeconds } }"
    await gateway.register(first)
    await gateway.register(second)
    assert "data" in (await gateway.by_hash(first)).json()  # first is now the most recently used
    await gateway.register(third)  # over the bound: second goes
    assert (await gateway.by_hash(second)).json() == NOT_FOUND
    assert "data" in (await gateway.by_hash(first)).json()
    assert "data" in (await gateway.by_hash(third)).json()


def test_the_cache_is_bounded() -> None:
    cache = PersistedQueryCache(3)
    for n in range(10):
        cache.put(f"h{n}", f"q{n}")
    assert len(cache) == 3
    assert [cache.get(f"h{n}") for n in range(10)] == [None] * 7 + ["q7", "q8", "q9"]


def test_the_cache_is_bounded_by_bytes() -> None:
    cache = PersistedQueryCache(100, budget=100)
    for n in range(4):
        cache.put(f"h{n}", str(n) * 30)  # 30 bytes each: the fourth takes the total to 120
    assert (len(cache), cache.bytes) == (3, 90)
    assert cache.get("h0") is None  # the least recently used went first
    assert cache.get("h1") is not None  # now the most recently used
    cache.put("big", "x" * 70)  # 160 bytes: h2 and h3 go, h1 (used last) and big stay
    assert (len(cache), cache.bytes) == (2, 100)
    assert [cache.get(sha) is not None for sha in ("h1", "h2", "h3", "big")] == [True, False, False, True]
    cache.put("big", "é" * 10)  # re-registering replaces the text; bytes are UTF-8 bytes
    assert cache.bytes == 50


def test_the_defaults_bound_the_cache_by_bytes() -> None:
    assert (CACHE_BYTES, DOCUMENT_BYTES) == (8 * 1024 * 1024, 32 * 1024)
    cache = PersistedQueryCache(100_000)  # the largest GATEWAY_APQ_CACHE_SIZE
    for n in range(300):
        cache.put(f"h{n}", "#" * DOCUMENT_BYTES)
    assert cache.bytes <= CACHE_BYTES
    assert len(cache) == CACHE_BYTES // DOCUMENT_BYTES


async def test_a_document_over_the_limit_is_refused_registration(gateway: Gateway) -> None:
    padded = " " * DOCUMENT_BYTES + VERSION  # valid (blanks are not tokens, comments are), and over 32 KiB
    refused = await gateway.register(padded)
    assert refused.status_code == 400
    message = f"persisted queries register documents of at most {DOCUMENT_BYTES} bytes and this one has"
    assert refused.json()["errors"][0]["message"].startswith(message)
    assert refused.json()["errors"][0]["extensions"] == {"code": "PERSISTED_QUERY_TOO_LARGE"}
    assert "data" not in refused.json()
    assert (await gateway.by_hash(padded)).json() == NOT_FOUND
    plain = await gateway.client.post("/graphql", json={"query": padded})  # without a hash it runs as ever
    assert plain.json() == {"data": {"gateway": {"version": "0.1.0"}}}


@pytest.mark.parametrize("overrides", [{"apq": False}])
async def test_switched_off_it_is_not_supported(gateway: Gateway) -> None:
    assert (await gateway.by_hash(VERSION)).json() == NOT_SUPPORTED
    registration = await gateway.register(VERSION)  # Apollo Server answers the same to a registration
    assert (registration.status_code, registration.json()) == (200, NOT_SUPPORTED)
    plain = await gateway.client.post("/graphql", json={"query": VERSION})
    assert plain.json() == {"data": {"gateway": {"version": "0.1.0"}}}


# ---------------------------------------------------------------------------------------------
# With trusted documents: lookups only, never registration


@pytest.fixture(params=[True, False], ids=["apq-on", "apq-off"])
async def trusted(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    """A gateway that runs only `VERSION`, with `GATEWAY_APQ` on and off."""
    path = tmp_path / "trusted.json"
    path.write_text(json.dumps({document_hash(VERSION): VERSION}))
    async with serve(tmp_path, trusted_documents=str(path), apq=request.param) as gateway:
        yield gateway


async def test_with_trusted_documents_registration_is_refused(trusted: Gateway) -> None:
    hit = await trusted.by_hash(VERSION)
    assert hit.json() == {"data": {"gateway": {"version": "0.1.0"}}}
    miss = await trusted.by_hash(BACKEND)
    assert (miss.status_code, miss.headers["content-type"], miss.json()) == (200, "application/json", NOT_FOUND)
    registration = await trusted.register(BACKEND)
    assert registration.status_code == 400
    assert registration.json()["errors"][0]["extensions"] == {"code": "PERSISTED_QUERY_NOT_IN_LIST"}
    assert "data" not in registration.json()
    assert (await trusted.by_hash(BACKEND)).json() == NOT_FOUND  # still not registered
    assert "data" in (await trusted.register(VERSION)).json()  # the text of a trusted document runs


# ---------------------------------------------------------------------------------------------
# Apollo Client's persisted-query link, played against the gateway


async def apollo_link(client: httpx.AsyncClient, document: str, variables: dict[str, Any] | None = None) -> Any:
    """What `createPersistedQueryLink({sha256, useGETForHashedQueries: true})` does: the hash alone
    (GET for a query); on PERSISTED_QUERY_NOT_FOUND the hash and the text (POST); on
    PERSISTED_QUERY_NOT_SUPPORTED the text alone. Its decisions read only the errors' codes."""
    persisted = extensions(document)
    is_query = not document.lstrip().startswith("mutation")
    if is_query:
        params = {"extensions": json.dumps(persisted), **({"variables": json.dumps(variables)} if variables else {})}
        first = await client.get("/graphql", params=params, headers={"accept": "*/*"})
    else:
        first = await client.post("/graphql", json={"extensions": persisted, "variables": variables})
    codes = {error.get("extensions", {}).get("code") for error in first.json().get("errors", [])}
    if "PERSISTED_QUERY_NOT_FOUND" in codes:
        payload = {"query": document, "extensions": persisted, "variables": variables}
        return (await client.post("/graphql", json=payload)).json()
    if "PERSISTED_QUERY_NOT_SUPPORTED" in codes:
        return (await client.post("/graphql", json={"query": document, "variables": variables})).json()
    return first.json()


@pytest.mark.parametrize("overrides", [{}, {"apq": False}], ids=["apq-on", "apq-off"])
async def test_apollos_link_falls_back_instead_of_failing(gateway: Gateway) -> None:
    for _ in range(2):  # the first time registers (when on), the second hits
        assert await apollo_link(gateway.client, VERSION) == {"data": {"gateway": {"version": "0.1.0"}}}
        answer = await apollo_link(gateway.client, MUTATION, {"input": device_input()})
        assert answer["data"]["regenerateAccessCode"]["__typename"] == "BootstrapCredentials"
    assert len(gateway.backend.callers) == 2
