"""The GraphQL layer does its work once per distinct document, and its guards in linear time.

Over real HTTP (uvicorn, the app's lifespan): a document whose fragments spread each other twice
(fan-out 2^n) is refused, the guards measure each fragment once (their work, counted, grows
linearly in n), aliases reached through fragments are counted, the document cache stays within its
bound and a cached document still passes every guard; suggestions stay hidden and unexpected
errors masked.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from graphql import get_introspection_query
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.api.documents import CACHEABLE_TOKENS
from gateway.api.schema import MASKED_MESSAGE, GatewaySchema
from gateway.api.view import GraphQLView
from gateway.app import create_app
from gateway.domain import Credentials
from tests.demo import REGENERATE, bearer, device_input, errors
from tests.security import RecordingBackend, ServedGateway, sqlite_settings
from tests.utils import run_server

pytestmark = pytest.mark.anyio

VERSION = "{ gateway { version } }"
CACHE_SIZE = 8


def schema_of(app: Starlette) -> GatewaySchema:
    """The schema the app's `/graphql` route executes with."""
    for route in app.routes:
        if isinstance(route, Route) and route.path == "/graphql":
            view = route.endpoint
            assert isinstance(view, GraphQLView)
            assert isinstance(view.schema, GatewaySchema)
            return view.schema
    raise AssertionError("no /graphql route")


@dataclass
class Gateway(ServedGateway):
    schema: GatewaySchema


class ExplodingBackend(RecordingBackend):
    """Records the caller, then fails the way a bug would."""

    async def regenerate(self, *args: Any, **kwargs: Any) -> Credentials:
        await super().regenerate(*args, **kwargs)
        raise RuntimeError("secret internals: /srv/db password=hunter2")


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """The gateway with default limits but a document cache of `CACHE_SIZE`."""
    settings = sqlite_settings(
        tmp_path_factory.mktemp("guards"),
        rate_limit_device=0,
        rate_limit_caller=0,
        graphql_document_cache_size=CACHE_SIZE,
    )
    backend = ExplodingBackend()
    app = create_app(settings, backend=backend)
    async with (
        run_server(app) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": bearer(settings)}) as client,
    ):
        yield Gateway(client, backend, schema_of(app))


@pytest.fixture
def gateway(served: Gateway) -> Gateway:
    served.backend.callers.clear()
    return served


def fan_out(n: int, *, tag: str = "") -> str:
    """`n` fragments, each spreading the next twice: 2^n selections once expanded."""
    fragments = " ".join(f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(n))
    return f"query Q{tag} {{ ...F0 }} {fragments} fragment F{n} on Query {{ __typename }}"


def fresh() -> str:
    """An operation-name suffix that makes a document's text new to the cache."""
    return uuid.uuid4().hex[:8]


# ---------------------------------------------------------------------------------------------
# Fan-out, linear work, aliases through fragments


@pytest.mark.parametrize("n", [20, 90])
async def test_fragment_fan_out_is_refused(gateway: Gateway, n: int) -> None:
    document = fan_out(n, tag=fresh())
    [message] = errors(await gateway.graphql(document))
    shown = str(2**n) if n == 20 else "at least 1000000000"
    assert message == f"{shown} field selections found, fragments expanded. Allowed: 1000"
    # The same fan-out behind a mutation: refused before the backend is reached.
    mutation = fan_out(n).replace("query Q", "mutation M").replace("on Query", "on Mutation")
    assert "field selections found" in errors(await gateway.graphql(mutation))[0]
    assert gateway.backend.callers == []


async def test_the_guards_measure_each_fragment_once(gateway: Gateway) -> None:
    work = gateway.schema.guard_work
    visits: dict[int, int] = {}
    for n in (5, 10, 20, 40):
        fragments, selections = work.fragments_measured, work.selections_visited
        body = await gateway.graphql(fan_out(n, tag=fresh()))
        if n >= 10:  # 2^n > 1000 selections
            assert "field selections found" in errors(body)[0]
        else:
            assert body == {"data": {"__typename": "Query"}}
        assert work.fragments_measured - fragments == n + 1  # F0 … Fn, once each
        visits[n] = work.selections_visited - selections
    # Each fragment's two spreads, the last one's field and the operation's spread: 2n + 2.
    assert all(visits[n] <= 4 * n for n in visits), visits
    assert 1.8 <= visits[40] / visits[20] <= 2.2, visits
    assert 1.8 <= visits[20] / visits[10] <= 2.2, visits


def aliases_through_fragments(top: int) -> str:
    """`top` aliased fields at the top, each holding fragment A: A has 2 aliases and spreads B
    twice, B has 2 and spreads C twice, C has 2: 2 + 2 * (2 + 2 * 2) = 14 aliases per A."""
    fields = " ".join(f"g{i}: gateway {{ ...A }}" for i in range(top))
    return (
        f"{{ {fields} }} "
        "fragment A on GatewayInfo { a1: version a2: version ...B ...B } "
        "fragment B on GatewayInfo { b1: version b2: version ...C ...C } "
        "fragment C on GatewayInfo { c1: version c2: backend }"
    )


async def test_aliases_reached_through_fragments_are_counted(gateway: Gateway) -> None:
    # 1 + 14 = 15: the limit, answered.
    body = await gateway.graphql(aliases_through_fragments(1))
    assert body["data"]["g0"]["a1"] == "0.1.0"
    # 2 + 28 = 30: refused, counted through every spread.
    assert errors(await gateway.graphql(aliases_through_fragments(2))) == ["30 aliases found. Allowed: 15"]
    # A fragment spread into a mutation: refused before anything reaches the backend.
    mutation = (
        "mutation { ...M ...M } fragment M on Mutation { "
        + " ".join(f"m{i}: regenerateAccessCode(input: $input) {{ __typename }}" for i in range(8))
        + " }"
    )
    with_variables = mutation.replace("mutation {", "mutation($input: RegenerateAccessCodeInput!) {")
    body = await gateway.graphql(with_variables, variables={"input": device_input()})
    assert errors(body) == ["16 aliases found. Allowed: 15"]
    assert gateway.backend.callers == []


async def test_fragment_cycles_are_reported_not_looped_on(gateway: Gateway) -> None:
    document = "{ ...A } fragment A on Query { ...B __typename } fragment B on Query { ...A }"
    messages = errors(await gateway.graphql(document))
    assert any("Cannot spread fragment 'A' within itself" in message for message in messages), messages


async def test_graphiqls_introspection_query_passes_the_guards(gateway: Gateway) -> None:
    """Its fragments nest `ofType` nine levels deep and spread `TypeRef` often: within the limits."""
    query = get_introspection_query(descriptions=True, input_value_deprecation=True, one_of=True)
    body = await gateway.graphql(query)
    assert "errors" not in body, body
    assert body["data"]["__schema"]["queryType"]["name"] == "Query"


# ---------------------------------------------------------------------------------------------
# The document cache


async def test_the_cache_stays_within_its_bound(gateway: Gateway) -> None:
    cache = gateway.schema.documents
    for i in range(3 * CACHE_SIZE):
        body = await gateway.graphql(f"query Distinct{i}{fresh()} {{ gateway {{ version }} }}")
        assert body == {"data": {"gateway": {"version": "0.1.0"}}}
        assert cache.info().documents <= CACHE_SIZE
    assert cache.info().documents == CACHE_SIZE
    # Longer documents are answered, never kept.
    long = "query Long" + fresh() + " { gateway { " + "version " * CACHEABLE_TOKENS + "} }"
    before = cache.info()
    assert (await gateway.graphql(long))["data"] == {"gateway": {"version": "0.1.0"}}
    assert (await gateway.graphql(long))["data"] == {"gateway": {"version": "0.1.0"}}
    assert cache.info().misses == before.misses + 2
    assert long not in cache


OVER_LIMITS = [
    pytest.param(
        "{ gateway " + "{ a " * 11 + "b" + " }" * 11 + " }", "exceeds maximum operation depth of 10", id="depth"
    ),
    pytest.param(
        "{ " + " ".join(f"g{i}: gateway {{ version }}" for i in range(16)) + " }",
        "16 aliases found. Allowed: 15",
        id="aliases",
    ),
    pytest.param(fan_out(12), "4096 field selections found, fragments expanded. Allowed: 1000", id="fan-out"),
    pytest.param("{ gateway { " + "version " * 1000 + "} }", "Document contains more than 1000 tokens", id="tokens"),
    pytest.param("{ gateway { versio } }", "Cannot query field 'versio' on type 'GatewayInfo'.", id="invalid"),
]


@pytest.mark.parametrize(("document", "refusal"), OVER_LIMITS)
async def test_a_cached_document_still_passes_every_guard(gateway: Gateway, document: str, refusal: str) -> None:
    cache = gateway.schema.documents
    for _ in range(2):
        [message] = errors(await gateway.graphql(document))
        assert refusal in message
    if "tokens" not in refusal:  # kept (short enough): the second refusal came from the cache
        assert document in cache


async def test_a_good_document_is_answered_from_the_cache(gateway: Gateway) -> None:
    cache = gateway.schema.documents
    document = f"query Good{fresh()} {{ gateway {{ version backend }} }}"
    expected = {"data": {"gateway": {"version": "0.1.0", "backend": "LOCAL"}}}
    first = cache.info()
    assert await gateway.graphql(document) == expected
    assert cache.info().misses == first.misses + 1
    second = cache.info()
    assert await gateway.graphql(document) == expected
    assert cache.info().hits == second.hits + 1
    assert cache.info().misses == second.misses


async def test_operation_names_and_types_are_checked_on_cached_documents(gateway: Gateway) -> None:
    two = "query A { gateway { version } } query B { gateway { backend } }"
    for _ in range(2):
        body = await gateway.graphql(two, operationName="B")
        assert body == {"data": {"gateway": {"backend": "LOCAL"}}}
        unknown = await gateway.client.post("/graphql", json={"query": two, "operationName": "C"})
        assert unknown.status_code == 400
        assert unknown.json()["errors"][0]["message"] == 'Unknown operation named "C".'
        by_get = await gateway.client.get("/graphql", params={"query": "mutation { __typename }"})
        assert by_get.status_code == 400
        assert "mutations are not allowed when using GET" in by_get.text


# ---------------------------------------------------------------------------------------------
# Suggestions, masking


async def test_suggestions_stay_hidden(gateway: Gateway) -> None:
    for _ in range(2):  # the second time from the cache
        assert errors(await gateway.graphql("{ gatewy { version } }")) == [
            "Cannot query field 'gatewy' on type 'Query'."
        ]
        body = await gateway.graphql(REGENERATE, variables={"input": device_input(mode="ACTIV")})
        [message] = errors(body)
        assert "ACTIV" in message
        assert "Did you mean" not in message
        assert "ACTIVE" not in message
    assert gateway.backend.callers == []


async def test_unexpected_resolver_errors_stay_masked(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    payload = {"query": REGENERATE, "variables": {"input": device_input()}}
    for request_id in ("req-guards-1", "req-guards-2"):
        with caplog.at_level(logging.ERROR, logger="gateway"):
            response = await gateway.client.post("/graphql", json=payload, headers={"x-request-id": request_id})
        body = response.json()
        assert body["data"] is None
        [error] = body["errors"]
        assert error["message"] == MASKED_MESSAGE
        assert error["path"] == ["regenerateAccessCode"]
        assert "hunter2" not in response.text
        assert any(request_id in record.getMessage() for record in caplog.records)
    assert len(gateway.backend.callers) == 2
