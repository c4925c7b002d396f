"""Fixtures shared by the suite: stores over SQLite and PostgreSQL, the app served over HTTP.

Store-backed fixtures are parametrized with ids `sqlite` and `postgres`. Each test gets its own
SQLite file or its own PostgreSQL schema, dropped afterwards. PostgreSQL is the server at
GATEWAY_TEST_POSTGRES_URL (default 127.0.0.1:5432, database `test`); when it cannot be reached the
postgres cases are skipped on a developer's machine and fail in CI (CI=true).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.app import create_app, store_tables
from gateway.auth import mint_token
from gateway.domain import DEVICE_ACTIONS_POST, DeviceRef, ErrorCode, StudyMode
from gateway.engine.engine import CredentialEngine
from gateway.engine.registry import DEMO_REGISTRY, load_registry
from gateway.engine.tables import seed
from gateway.regeneration import DeviceRequest
from gateway.settings import Settings
from gateway.store import Store
from tests.utils import run_server

pytest_plugins = ["tests.secret_watch"]

POSTGRES_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
TEST_KDF_COST = 4  # scrypt N = 16: the hash's shape is what the tests check, not its cost
TEST_AUDIT_KEY = bytes(range(32))  # an obviously fake MAC key for the audit trail
TEST_HS256_SECRET = "test-only-hs256-secret-not-for-any-real-gateway"  # an obviously fake value

STUDY = "DE305D5475B4431BADB2EB6B9E546014"
SUBJECT = "A1B2C3D4E5F60718293A4B5C6D7E8F90"
OTHER_SUBJECT = "B2C3D4E5F60718293A4B5C6D7E8F90A1"
READY_DEVICE = "DEMO-READY-01"
ALL_TABLES = store_tables(Settings(backend="local"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Database:
    """Where a test's store lives: a URL and, for PostgreSQL, the test's own schema."""

    url: str
    schema: str = ""

    @property
    def kind(self) -> str:
        return "postgres" if self.url.startswith("postgresql") else "sqlite"


async def _postgres_schema() -> AsyncIterator[Database]:
    admin = create_async_engine(POSTGRES_URL)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        async with admin.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OSError as error:
        await admin.dispose()
        message = f"PostgreSQL at {POSTGRES_URL} is unreachable: {error}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield Database(POSTGRES_URL, schema)
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """An empty database of each kind, for this test alone."""
    if request.param == "sqlite":
        yield Database(f"sqlite+aiosqlite:///{tmp_path / 'store.sqlite3'}")
        return
    async for database in _postgres_schema():
        yield database


@pytest.fixture
async def store(database: Database) -> AsyncIterator[Store]:
    """An open store with the demo registry loaded."""
    store = await Store.open(database.url, schema=database.schema, tables=ALL_TABLES)
    await seed(store, load_registry(DEMO_REGISTRY))
    try:
        yield store
    finally:
        await store.close()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(store: Store, clock: Clock) -> CredentialEngine:
    return CredentialEngine(store, kdf_cost=TEST_KDF_COST, clock=clock)


@pytest.fixture
def settings(database: Database, tmp_path: Path) -> Settings:
    return Settings().replace(
        database_url=database.url,
        database_schema=database.schema,
        data_dir=str(tmp_path),
        kdf_cost=TEST_KDF_COST,
        auth_hs256_secret=TEST_HS256_SECRET,
    )


ALL_RIGHTS: dict[str, dict[str, list[str]]] = {"*": {"*": [DEVICE_ACTIONS_POST]}}


def bearer(
    settings: Settings,
    rights: Mapping[str, Mapping[str, Collection[str]]] | None = None,
    *,
    subject: str = "test-user",
    ttl_seconds: int = 600,
) -> str:
    """An `Authorization` header value the gateway under `settings` accepts: a token signed with
    the test secret, granting `rights` (default: DeviceActionsPost for every study and mode)."""
    token = mint_token(
        TEST_HS256_SECRET.encode(),
        issuer=settings.auth.issuer,
        audience=settings.auth.audience,
        subject=subject,
        rights=ALL_RIGHTS if rights is None else rights,
        ttl_seconds=ttl_seconds,
    )
    return f"Bearer {token}"


@pytest.fixture
async def gateway_url(settings: Settings) -> AsyncIterator[str]:
    """The gateway (local backend, demo data) served by uvicorn on a free loopback port."""
    store = await Store.open(settings.store_url, schema=settings.database_schema, tables=ALL_TABLES)
    await seed(store, load_registry(DEMO_REGISTRY))
    await store.close()
    async with run_server(create_app(settings)) as url:
        yield url


@pytest.fixture
async def client(gateway_url: str, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the served gateway, sending a token with every right (see `bearer`)."""
    headers = {"Authorization": bearer(settings)}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10, headers=headers) as client:
        yield client


# Every refusal the local engine gives for the demo data: GraphQL input overrides → the cause.
DEMO_REFUSALS = [
    pytest.param({"studyId": "0" * 32}, ErrorCode.STUDY_NOT_FOUND, id="unknown-study"),
    pytest.param({"mode": "TRAINING"}, ErrorCode.STUDY_NOT_FOUND, id="study-not-in-mode"),
    pytest.param({"mode": "TEST"}, ErrorCode.MHEALTH_SETTINGS_NOT_FOUND, id="no-mhealth-settings"),
    pytest.param({"subjectId": "F" * 32}, ErrorCode.INVALID_SUBJECT, id="unknown-subject"),
    pytest.param({"mSubjectId": "MSUBJECT-999"}, ErrorCode.INVALID_SUBJECT, id="unknown-msubject"),
    pytest.param({"mSubjectId": "MSUBJECT-002"}, ErrorCode.INVALID_SUBJECT, id="another-subjects-msubject"),
    pytest.param({"inventoryId": "DEMO-UNKNOWN"}, ErrorCode.INVALID_DEVICE, id="unknown-device"),
    pytest.param({"inventoryId": "DEMO-UNREGISTERED"}, ErrorCode.DEVICE_NOT_REGISTERED, id="unregistered"),
    pytest.param({"inventoryId": "DEMO-IN-STOCK"}, ErrorCode.DEVICE_NOT_DISPENSED, id="not-dispensed"),
    pytest.param(
        {"inventoryId": "DEMO-OTHER-SUBJECT"}, ErrorCode.DEVICE_DISPENSED_TO_ANOTHER_SUBJECT, id="other-subject"
    ),
    pytest.param({"inventoryId": "DEMO-NO-TYPE"}, ErrorCode.MISSING_CONNECTION_TYPE, id="no-connection-type"),
    pytest.param({"inventoryId": "DEMO-CLOUD-NO-VENDOR"}, ErrorCode.MISSING_VENDOR_CODE, id="no-vendor-code"),
    pytest.param({"inventoryId": "DEMO-NO-CONNECTION"}, ErrorCode.NO_CONNECTION_DEVICE, id="no-connection"),
]


def ref_for(**overrides: Any) -> DeviceRef:
    """The `DeviceRef` a backend receives for `device_input(**overrides)`."""
    values = device_input(**overrides)
    return DeviceRequest(
        study_id=values["studyId"],
        mode=values["mode"].lower(),
        subject_id=values["subjectId"],
        inventory_id=values["inventoryId"],
        m_subject_id=values["mSubjectId"],
    ).parse()


READY_REF = DeviceRef.parse(
    study_id=STUDY, mode=StudyMode.ACTIVE, subject_id=SUBJECT, inventory_id=READY_DEVICE, m_subject_id="MSUBJECT-001"
)
"""The demo's ready device, as a backend receives it."""


REGENERATE = """
mutation Regenerate($input: RegenerateAccessCodeInput!) {
  regenerateAccessCode(input: $input) {
    __typename
    ... on BootstrapCredentials { accessId otp id expiresAt }
    ... on Error { code message }
    ... on InvalidInputError { field }
    ... on RateLimitedError { retryAfterSeconds }
    ... on UnrecognizedUpstreamError { upstreamStatus upstreamCode }
  }
}
"""


def device_input(**overrides: Any) -> dict[str, Any]:
    """GraphQL input for the demo's ready device, with some fields changed."""
    values = {
        "studyId": STUDY,
        "mode": "ACTIVE",
        "subjectId": SUBJECT,
        "inventoryId": READY_DEVICE,
        "mSubjectId": "MSUBJECT-001",
    }
    values.update(overrides)
    return values


async def regenerate(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    """Run the mutation over HTTP; return the union member as JSON."""
    response = await client.post(
        "/graphql", json={"query": REGENERATE, "variables": {"input": device_input(**overrides)}}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["regenerateAccessCode"]
    return result


def rest_path(**overrides: Any) -> str:
    """The REST face's PUT path (with query) for the same input as `device_input`."""
    values = device_input(**overrides)
    return (
        f"/ec-ors-svc/rest/v1.0/studies/{values['studyId']}/{values['mode'].lower()}/subjects/{values['subjectId']}"
        f"/devices/{values['inventoryId']}/access-code?mSubjectId={values['mSubjectId']}"
    )
