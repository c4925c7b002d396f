"""Parity: the same contract suite over both backends, through real HTTP.

`local`: the gateway over the demo registry answers the mutation itself. `upstream`: a second
gateway, in upstream mode, answers it by calling the first one's REST face (the upstream's own
contract) with its pooled httpx client. Every union member the credential engine can produce
must come back identical (`__typename`, `code`, `message`) through both.

Also here: path-injection attempts through GraphQL in upstream mode never reach a (counting)
upstream, /readyz for both backends, and the lifespan closing the upstream client.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

import gateway.app as app_module
from gateway.api.types import ERROR_TYPES
from gateway.app import create_app
from gateway.domain import CAUSES, Backend, DeviceRef, ErrorCode, InvalidInput, StudyMode
from gateway.engine import otp
from gateway.engine.registry import DEMO_REGISTRY, load_registry
from gateway.engine.tables import seed
from gateway.settings import Settings
from gateway.store import Store
from gateway.upstream import UpstreamClient
from gateway.upstream.client import access_code_path
from tests.demo import (
    ALL_TABLES,
    DEMO_REFUSALS,
    READY_DEVICE,
    STUDY,
    SUBJECT,
    TEST_KDF_COST,
    device_input,
    regenerate,
)
from tests.upstream_servers import ScriptedUpstream, serve_scripted
from tests.utils import run_server

pytestmark = pytest.mark.anyio

READY_INSTANCE = "B1B8327AFAA6412287106192AB5984EF"
CLOUD_READY_INSTANCE = "B1B8327AFAA6412287106192AB598401"


@dataclass(frozen=True)
class Served:
    """The gateway a test talks to, and the SQLite file of the engine that really issues pairs."""

    backend: str
    client: httpx.AsyncClient
    store_file: Path
    front: Any
    """The front gateway's Starlette app (its state holds the backend after startup)."""


def base_settings(data_dir: Path, **overrides: Any) -> Settings:
    data_dir.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{data_dir / 'store.sqlite3'}",
        "data_dir": str(data_dir),
        "kdf_cost": TEST_KDF_COST,
        # This suite is about the backends: authentication and rate limits have their own tests.
        "insecure_disable_auth": True,
        "rate_limit_device": 1_000_000,
        "rate_limit_caller": 1_000_000,
    }
    values.update(overrides)
    return Settings().replace(**values)


@asynccontextmanager
async def serve_gateway(backend: str, tmp_path: Path) -> AsyncIterator[Served]:
    """The local gateway over the demo registry and, for `upstream`, a second gateway in front of it."""
    local = base_settings(tmp_path / "local")
    store = await Store.open(local.store_url, tables=ALL_TABLES)
    await seed(store, load_registry(DEMO_REGISTRY))
    await store.close()
    async with AsyncExitStack() as stack:
        front = create_app(local)
        url = await stack.enter_async_context(run_server(front))
        if backend == "upstream":
            front = create_app(base_settings(tmp_path / "front", backend="upstream", upstream_url=url))
            url = await stack.enter_async_context(run_server(front))
        client = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
        yield Served(backend, client=client, store_file=tmp_path / "local" / "store.sqlite3", front=front)


# The gateways are started once for the module (two uvicorn servers per test would dominate its
# run time); tests that break their store start their own with `serve_gateway`.
@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def deployments(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Served]]:
    async with AsyncExitStack() as stack:
        yield {
            name: await stack.enter_async_context(serve_gateway(name, tmp_path_factory.mktemp(name)))
            for name in ("local", "upstream")
        }


@pytest.fixture(params=["local", "upstream"])
def served(request: pytest.FixtureRequest, deployments: dict[str, Served]) -> Served:
    """The gateway under test: `local`, or `upstream` (a gateway in front of another's REST face)."""
    return deployments[request.param]


def member(code: ErrorCode) -> dict[str, Any]:
    """The union member a refusal must render as, read from the cause table."""
    return {"__typename": ERROR_TYPES[code].__name__, "code": code.value, "message": CAUSES[code].message}


def invalid_input(**overrides: Any) -> dict[str, Any]:
    """The InvalidInputError the domain's own parser gives for this input."""
    values = device_input(**overrides)
    with pytest.raises(InvalidInput) as caught:
        DeviceRef.parse(
            study_id=values["studyId"],
            mode=StudyMode[values["mode"]],
            subject_id=values["subjectId"],
            inventory_id=values["inventoryId"],
            m_subject_id=values["mSubjectId"],
        )
    refusal = caught.value
    return {**member(ErrorCode.INVALID_INPUT), "message": refusal.message, "field": refusal.field}


INVALID_INPUTS = [
    pytest.param({"studyId": "not-a-guid"}, id="study-id"),
    pytest.param({"subjectId": SUBJECT[:-1]}, id="subject-id-short"),
    pytest.param({"inventoryId": "../DEMO-READY-01"}, id="inventory-id-dot-dot"),
    pytest.param({"mSubjectId": ""}, id="m-subject-id-empty"),
]


def test_the_suite_covers_every_member_the_engine_can_produce() -> None:
    covered = {param.values[1] for param in DEMO_REFUSALS} | {ErrorCode.INTERNAL_SERVER_ERROR, ErrorCode.INVALID_INPUT}
    engine_causes = {cause.code for cause in CAUSES.values() if cause.documented} | {ErrorCode.INVALID_INPUT}
    assert covered == engine_causes


@pytest.mark.parametrize(("overrides", "code"), DEMO_REFUSALS)
async def test_each_refusal_is_the_same_member(served: Served, overrides: dict[str, Any], code: ErrorCode) -> None:
    assert await regenerate(served.client, **overrides) == member(code)


@pytest.mark.parametrize("overrides", INVALID_INPUTS)
async def test_invalid_input_is_the_same_member(served: Served, overrides: dict[str, Any]) -> None:
    assert await regenerate(served.client, **overrides) == invalid_input(**overrides)


@pytest.mark.parametrize("backend", ["local", "upstream"])
async def test_a_store_failure_is_the_same_internal_server_error(backend: str, tmp_path: Path) -> None:
    async with serve_gateway(backend, tmp_path) as served:
        with sqlite3.connect(served.store_file) as db:
            db.execute("DROP TABLE credentials")  # the engine can judge, but not store the new pair
        assert await regenerate(served.client) == member(ErrorCode.INTERNAL_SERVER_ERROR)


@pytest.mark.parametrize(
    ("overrides", "instance"),
    [
        pytest.param({}, READY_INSTANCE, id="device-to-cloud"),
        pytest.param({"inventoryId": "DEMO-CLOUD-READY"}, CLOUD_READY_INSTANCE, id="cloud-to-cloud"),
        pytest.param({"studyId": "de305d54-75b4-431b-adb2-eb6b9e546014"}, READY_INSTANCE, id="guid-normalised"),
    ],
)
async def test_success_delivers_the_pair_the_engine_issued(
    served: Served, overrides: dict[str, Any], instance: str
) -> None:
    result = await regenerate(served.client, **overrides)
    assert result["__typename"] == "BootstrapCredentials"
    assert result["id"] == instance
    assert len(result["accessId"]) == otp.ACCESS_ID_LENGTH
    assert len(result["otp"]) == otp.OTP_LENGTH
    # The upstream does not say when the OTP expires; the local engine does.
    assert (result["expiresAt"] is None) == (served.backend == "upstream")
    # The pair handed back is the device's current one in the engine's store.
    inventory_id = overrides.get("inventoryId", READY_DEVICE)
    with sqlite3.connect(served.store_file) as db:
        row = db.execute(
            "SELECT access_id, otp_hash FROM credentials WHERE inventory_id = ?", (inventory_id,)
        ).fetchone()
    assert row[0] == result["accessId"]
    assert otp.verify_otp(result["otp"], row[1])


async def test_both_backends_answer_alike_side_by_side(deployments: dict[str, Served]) -> None:
    cases = [cast(dict[str, Any], param.values[0]) for param in DEMO_REFUSALS + INVALID_INPUTS]
    local, upstream = deployments["local"].client, deployments["upstream"].client
    for overrides in cases:
        assert await regenerate(local, **overrides) == await regenerate(upstream, **overrides)


async def test_the_request_id_travels_upstream(tmp_path: Path) -> None:
    async with serve_scripted() as (upstream, url):
        front = create_app(base_settings(tmp_path, backend="upstream", upstream_url=url))
        async with run_server(front) as gateway, httpx.AsyncClient(base_url=gateway) as client:
            query = {"query": REGENERATE_TYPENAME, "variables": {"input": device_input()}}
            response = await client.post("/graphql", json=query, headers={"X-Request-ID": "parity-req-42"})
    assert response.json()["data"]["regenerateAccessCode"]["__typename"] == "BootstrapCredentials"
    assert response.headers["x-request-id"] == "parity-req-42"
    assert [seen.headers["x-request-id"] for seen in upstream.seen] == ["parity-req-42"]


REGENERATE_TYPENAME = """
mutation Regenerate($input: RegenerateAccessCodeInput!) { regenerateAccessCode(input: $input) { __typename } }
"""


# ---------------------------------------------------------------------------------------------
# Path injection: refused as InvalidInputError, and nothing reaches the upstream.

INJECTIONS: list[tuple[str, str]] = [
    ("inventoryId", "../../admin"),
    ("inventoryId", ".."),
    ("inventoryId", "."),
    ("inventoryId", "DEMO/READY"),
    ("inventoryId", "DEMO%2FREADY"),
    ("inventoryId", "DEMO%2fREADY"),
    ("inventoryId", "%2e%2e"),
    ("inventoryId", "DEMO?mSubjectId=OTHER"),
    ("inventoryId", "DEMO#fragment"),
    ("inventoryId", "DEMO READY"),
    ("inventoryId", "DEMO\\READY"),
    ("inventoryId", "DEMO\u2215READY"),  # division slash
    ("inventoryId", "D\u00c9MO"),
    ("inventoryId", "\uff24\uff25\uff2d\uff2f"),  # full-width letters
    ("inventoryId", "DEMO\r\nX-Injected: 1"),
    ("inventoryId", "DEMO\x00"),
    ("mSubjectId", "MSUBJECT-001&mSubjectId=MSUBJECT-002"),
    ("mSubjectId", "MSUBJECT-001#x"),
    ("mSubjectId", "MSUBJECT 001"),
    ("mSubjectId", "../MSUBJECT-001"),
    ("studyId", "../" + STUDY[3:]),
    ("studyId", STUDY[:-3] + "%2F"),
    ("studyId", STUDY[:-1] + "?"),
    ("studyId", "\u0663" + STUDY[1:]),  # an Arabic-Indic digit
    ("subjectId", SUBJECT[:-1] + "#"),
    ("subjectId", SUBJECT[:8] + "/" + SUBJECT[9:]),
]


async def test_path_injection_is_invalid_input_and_never_sent(tmp_path: Path) -> None:
    async with serve_scripted(ScriptedUpstream()) as (upstream, url):
        front = create_app(base_settings(tmp_path, backend="upstream", upstream_url=url))
        async with run_server(front) as gateway, httpx.AsyncClient(base_url=gateway, timeout=10) as client:
            for field, value in INJECTIONS:
                result = await regenerate(client, **{field: value})
                assert result["__typename"] == "InvalidInputError", (field, value)
                assert result["field"] == field, (field, value)
            assert upstream.seen == []
            assert (await regenerate(client))["__typename"] == "BootstrapCredentials"
    (seen,) = upstream.seen
    assert seen.raw_path == (
        f"/ec-ors-svc/rest/v1.0/studies/{STUDY}/active/subjects/{SUBJECT}/devices/{READY_DEVICE}/access-code"
    )
    assert seen.query == "mSubjectId=MSUBJECT-001"


@pytest.mark.parametrize(
    ("inventory_id", "expected"),
    [("a/b", "a%2Fb"), ("a?b#c d", "a%3Fb%23c%20d"), ("\u00e9", "%C3%A9"), ("%2e", "%252e")],
)
def test_a_hand_built_ref_is_still_encoded_segment_by_segment(inventory_id: str, expected: str) -> None:
    ref = DeviceRef(STUDY, StudyMode.ACTIVE, SUBJECT, inventory_id, "MSUBJECT-001")  # bypasses DeviceRef.parse
    assert access_code_path(ref).endswith(f"/devices/{expected}/access-code")


@pytest.mark.parametrize("inventory_id", ["", ".", ".."])
def test_a_hand_built_dot_segment_is_refused(inventory_id: str) -> None:
    ref = DeviceRef(STUDY, StudyMode.ACTIVE, SUBJECT, inventory_id, "MSUBJECT-001")
    with pytest.raises(InvalidInput):
        access_code_path(ref)


# ---------------------------------------------------------------------------------------------
# /readyz and the lifespan


async def test_readyz(served: Served) -> None:
    response = await served.client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["backend"]) == ("ready", served.backend)
    if served.backend == "local":
        assert body["store"] == "reachable"
    else:
        assert body["circuit"] == "closed"


async def test_the_lifespan_closes_the_upstream_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Backend] = []
    open_backend = app_module.open_backend

    async def recording(*args: Any) -> Backend:
        opened.append(await open_backend(*args))
        return opened[-1]

    monkeypatch.setattr(app_module, "open_backend", recording)
    async with serve_gateway("upstream", tmp_path) as served:
        await regenerate(served.client)
        [client] = [backend for backend in opened if isinstance(backend, UpstreamClient)]
        assert not client.http.is_closed
    assert client.http.is_closed
