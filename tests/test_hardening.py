"""GraphQL hardening over real HTTP: what never reaches execution.

CSRF-able content types, mutations by GET, batches, deep, aliased (fragments included),
long and oversized documents are refused; suggestions never leak the schema; trusted documents.
Each refusal is checked against `RecordingBackend`: nothing reached the backend.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import build_schema, parse, validate
from starlette.types import Message, Receive, Scope, Send

from gateway.api.guards import TrustedDocuments, document_hash, without_suggestions
from gateway.api.schema import schema as default_schema
from gateway.app import create_app
from gateway.http import BodySizeLimitMiddleware
from gateway.settings import SettingsError
from tests.demo import REGENERATE, bearer, device_input, errors, rest_path
from tests.security import RecordingBackend, ServedGateway, sqlite_settings
from tests.utils import run_server

pytestmark = pytest.mark.anyio

INPUT = (
    '{studyId: "DE305D5475B4431BADB2EB6B9E546014", mode: ACTIVE, subjectId: "A1B2C3D4E5F60718293A4B5C6D7E8F90", '
    'inventoryId: "DEMO-READY-01", mSubjectId: "MSUBJECT-001"}'
)
MUTATION = f"mutation {{ regenerateAccessCode(input: {INPUT}) {{ __typename }} }}"
VERSION = "{ gateway { version } }"


Gateway = ServedGateway


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    settings = sqlite_settings(tmp_path_factory.mktemp("hardening"), rate_limit_device=0, rate_limit_caller=0)
    backend = RecordingBackend()
    headers = {"Authorization": bearer(settings)}
    async with (
        run_server(create_app(settings, backend=backend)) as url,
        httpx.AsyncClient(base_url=url, headers=headers) as client,
    ):
        yield Gateway(client, backend)


@pytest.fixture
def gateway(served: Gateway) -> Gateway:
    """The gateway with default limits, a client with a valid token, nobody recorded yet."""
    served.backend.callers.clear()
    return served


async def test_the_mutation_itself_runs(gateway: Gateway) -> None:
    body = await gateway.graphql(MUTATION)
    assert body == {"data": {"regenerateAccessCode": {"__typename": "BootstrapCredentials"}}}
    assert len(gateway.backend.callers) == 1


# ---------------------------------------------------------------------------------------------
# CSRF, GET, batching


@pytest.mark.parametrize(
    ("content_type", "content"),
    [
        pytest.param("text/plain", json.dumps({"query": MUTATION}), id="text-plain"),
        pytest.param("text/plain;charset=UTF-8", json.dumps({"query": MUTATION}), id="text-plain-charset"),
        pytest.param("application/x-www-form-urlencoded", f"query={MUTATION}", id="form"),
        pytest.param(
            "multipart/form-data; boundary=X",
            '--X\r\nContent-Disposition: form-data; name="operations"\r\n\r\n'
            + json.dumps({"query": MUTATION})
            + "\r\n--X--\r\n",
            id="multipart",
        ),
        pytest.param("application/json-patch+json", json.dumps({"query": MUTATION}), id="json-lookalike"),
        pytest.param(None, json.dumps({"query": MUTATION}), id="no-content-type"),
    ],
)
async def test_csrf_content_types_are_refused_before_execution(
    gateway: Gateway, content_type: str | None, content: str
) -> None:
    request = gateway.client.build_request("POST", "/graphql", content=content.encode())
    if content_type is None:
        request.headers.pop("content-type", None)
    else:
        request.headers["content-type"] = content_type
    response = await gateway.client.send(request)
    assert response.status_code == 415
    assert gateway.backend.callers == []


async def test_mutations_by_get_are_refused(gateway: Gateway) -> None:
    response = await gateway.client.get("/graphql", params={"query": MUTATION})
    assert response.status_code == 400
    assert "mutations are not allowed when using GET" in response.text
    assert gateway.backend.callers == []
    query = await gateway.client.get("/graphql", params={"query": VERSION})
    assert query.json() == {"data": {"gateway": {"version": "0.1.0"}}}


async def test_batches_are_refused(gateway: Gateway) -> None:
    response = await gateway.client.post("/graphql", json=[{"query": MUTATION}, {"query": MUTATION}])
    assert response.status_code == 400
    assert "Batching is not enabled" in response.text
    assert gateway.backend.callers == []


# ---------------------------------------------------------------------------------------------
# Depth, aliases, tokens, size


def chain(depth: int) -> str:
    """`depth` selection sets, one inside the other."""
    return "{ " + "a { " * (depth - 1) + "b" + " }" * (depth - 1) + " }"


def nested(depth: int) -> str:
    return "{ gateway " + chain(depth - 1) + " }"


async def test_deep_documents_are_refused(gateway: Gateway) -> None:
    messages = errors(await gateway.graphql(nested(12)))
    assert "'anonymous' exceeds maximum operation depth of 10" in messages
    through_fragments = "query Deep { gateway { ...F } } fragment F on GatewayInfo " + chain(11)
    assert "'Deep' exceeds maximum operation depth of 10" in errors(await gateway.graphql(through_fragments))


async def test_unknown_fragments_are_reported_not_crashed_on(gateway: Gateway) -> None:
    assert errors(await gateway.graphql("{ gateway { ...Missing } }")) == ["Unknown fragment 'Missing'."]


def aliased_mutations(count: int) -> str:
    fields = " ".join(f"m{i}: regenerateAccessCode(input: {INPUT}) {{ __typename }}" for i in range(count))
    return f"mutation {{ {fields} }}"


async def test_fifteen_aliases_pass_and_sixteen_do_not(gateway: Gateway) -> None:
    fifteen = "{ " + " ".join(f"g{i}: gateway {{ version }}" for i in range(15)) + " }"
    assert len((await gateway.graphql(fifteen))["data"]) == 15
    assert errors(await gateway.graphql(aliased_mutations(16))) == ["16 aliases found. Allowed: 15"]
    assert gateway.backend.callers == []


async def test_aliases_inside_fragments_are_counted(gateway: Gateway) -> None:
    fragment = "fragment F on GatewayInfo { v1: version v2: version v3: version v4: version }"
    spread = "{ gateway { ...F } g2: gateway { ...F } g3: gateway { ...F } g4: gateway { ...F } } " + fragment
    assert errors(await gateway.graphql(spread)) == ["19 aliases found. Allowed: 15"]
    inline = "{ gateway { " + " ".join(f"... on GatewayInfo {{ v{i}: version }}" for i in range(16)) + " } }"
    assert errors(await gateway.graphql(inline)) == ["16 aliases found. Allowed: 15"]
    mutation_fragment = (
        "mutation { ...M } fragment M on Mutation { "
        + " ".join(f"m{i}: regenerateAccessCode(input: {INPUT}) {{ __typename }}" for i in range(16))
        + " }"
    )
    assert errors(await gateway.graphql(mutation_fragment)) == ["16 aliases found. Allowed: 15"]
    assert gateway.backend.callers == []


async def test_documents_with_too_many_tokens_are_refused(gateway: Gateway) -> None:
    long = "{ gateway { " + "version " * 1000 + "} }"
    [message] = errors(await gateway.graphql(long))
    assert "Document contains more than 1000 tokens. Parsing aborted." in message


async def test_oversized_bodies_are_refused_on_every_route(gateway: Gateway) -> None:
    padding = "#" + "x" * 70_000
    response = await gateway.client.post("/graphql", json={"query": padding + "\n" + MUTATION})
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    put = await gateway.client.put(rest_path(), content=b"x" * 70_000)
    assert put.status_code == 413
    assert gateway.backend.callers == []

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        yield json.dumps({"query": MUTATION, "padding": ""}).encode()[:-2]
        for _ in range(70):
            yield b"x" * 1000
        yield b'"}'

    streamed = await gateway.client.post("/graphql", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert gateway.backend.callers == []
    # The connection is still good for the next request.
    assert (await gateway.graphql(VERSION))["data"] == {"gateway": {"version": "0.1.0"}}


async def test_the_body_limit_counts_streamed_bytes() -> None:
    """At the ASGI level: a body without Content-Length is cut off at the limit, the app's own
    reading included, and the answer is 413."""
    read: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            read.append(len(message.get("body", b"")))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    chunks: list[Message] = [{"type": "http.request", "body": b"x" * 600, "more_body": True} for _ in range(3)]
    sent: list[Message] = []

    async def receive() -> Message:
        return chunks.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "headers": [], "method": "POST", "path": "/"}
    await BodySizeLimitMiddleware(app, max_bytes=1024)(scope, receive, send)
    assert sent[0]["status"] == 413
    assert read == [600]


# ---------------------------------------------------------------------------------------------
# Suggestions


async def test_errors_never_suggest_field_or_value_names(gateway: Gateway) -> None:
    probe = "{ gateway { versio } }"
    unhidden = [error.message for error in validate(build_schema(default_schema.as_str()), parse(probe))]
    assert any("Did you mean" in message for message in unhidden)  # graphql-core would have said it
    assert errors(await gateway.graphql(probe)) == ["Cannot query field 'versio' on type 'GatewayInfo'."]

    body = await gateway.graphql(REGENERATE, variables={"input": device_input(mode="ACTIV")})
    [message] = errors(body)
    assert "ACTIV" in message
    assert "Did you mean" not in message
    assert "ACTIVE" not in message
    assert gateway.backend.callers == []


def test_suggestions_are_cut_wherever_they_stand() -> None:
    assert without_suggestions("Unknown field 'a'. Did you mean 'b', 'c', or 'd'?") == "Unknown field 'a'."
    assert (
        without_suggestions("Value 'X' does not exist in 'M' enum. Did you mean the enum value 'Y'? Found 1.")
        == "Value 'X' does not exist in 'M' enum. Found 1."
    )


# ---------------------------------------------------------------------------------------------
# Trusted documents


@pytest.fixture
async def trusted(tmp_path: Path) -> AsyncIterator[Gateway]:
    path = tmp_path / "trusted.json"
    path.write_text(json.dumps({document_hash(VERSION): VERSION, document_hash(MUTATION): MUTATION}))
    settings = sqlite_settings(tmp_path, trusted_documents=str(path))
    backend = RecordingBackend()
    headers = {"Authorization": bearer(settings)}
    async with (
        run_server(create_app(settings, backend=backend)) as url,
        httpx.AsyncClient(base_url=url, headers=headers) as client,
    ):
        yield Gateway(client, backend)


def persisted(document: str) -> dict[str, Any]:
    return {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": document_hash(document)}}}


async def test_trusted_documents_run_by_hash_or_in_full(trusted: Gateway) -> None:
    by_hash = await trusted.client.post("/graphql", json=persisted(VERSION))
    assert by_hash.json() == {"data": {"gateway": {"version": "0.1.0"}}}
    in_full = await trusted.client.post("/graphql", json={"query": MUTATION, **persisted(MUTATION)})
    assert in_full.json()["data"]["regenerateAccessCode"]["__typename"] == "BootstrapCredentials"
    plain = await trusted.client.post("/graphql", json={"query": VERSION})
    assert plain.json()["data"] == {"gateway": {"version": "0.1.0"}}
    extensions = json.dumps(persisted(VERSION)["extensions"])
    accept = {"accept": "application/json"}
    by_get = await trusted.client.get("/graphql", params={"extensions": extensions}, headers=accept)
    assert by_get.json()["data"] == {"gateway": {"version": "0.1.0"}}
    # Without a token it is an execution like any other: refused.
    anonymous = await trusted.client.get(
        "/graphql", params={"extensions": extensions}, headers={**accept, "authorization": ""}
    )
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        pytest.param({"query": "{ gateway { backend } }"}, 400, "PERSISTED_QUERY_NOT_IN_LIST", id="unregistered"),
        # Apollo's protocol: a miss is 200 with the code Apollo's link acts on (tests/test_apq.py).
        pytest.param(persisted("{ gateway { backend } }"), 200, "PERSISTED_QUERY_NOT_FOUND", id="unknown-hash"),
        pytest.param(
            {"query": "{ gateway { backend } }", **persisted(VERSION)},
            400,
            "PERSISTED_QUERY_HASH_MISMATCH",
            id="hash-of-another-document",
        ),
        pytest.param({}, 400, None, id="nothing"),
    ],
)
async def test_other_documents_are_refused(
    trusted: Gateway, payload: dict[str, Any], status: int, code: str | None
) -> None:
    response = await trusted.client.post("/graphql", json=payload)
    assert response.status_code == status
    body = response.json()
    assert "data" not in body
    assert body["errors"][0].get("extensions", {}).get("code") == code
    assert trusted.backend.callers == []


def test_trusted_documents_files_are_checked(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "format": "apollo-persisted-query-manifest",
                "version": 1,
                "operations": [{"id": document_hash(VERSION), "body": VERSION, "name": "V", "type": "query"}],
            }
        )
    )
    assert TrustedDocuments.load(manifest).documents == {document_hash(VERSION): VERSION}
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"0" * 64: VERSION}))
    with pytest.raises(SettingsError, match="is not the sha256 of its document"):
        TrustedDocuments.load(wrong)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(SettingsError, match="cannot read"):
        TrustedDocuments.load(broken)
