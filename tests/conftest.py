"""Fixtures shared by the suite: stores over SQLite and PostgreSQL, the app served over HTTP.

Store-backed fixtures are parametrized with ids `sqlite` and `postgres`. Each test gets its own
SQLite file or its own PostgreSQL schema, dropped afterwards. PostgreSQL is the server at
GATEWAY_TEST_POSTGRES_URL (default 127.0.0.1:5432, database `test`); when it cannot be reached the
postgres cases are skipped on a developer's machine and fail in CI (CI=true).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.app import create_app
from gateway.engine.engine import CredentialEngine
from gateway.engine.registry import DEMO_REGISTRY, load_registry
from gateway.engine.tables import seed
from gateway.settings import Settings
from gateway.store import Store
from tests.demo import ALL_TABLES, POSTGRES_URL, TEST_HS256_SECRET, TEST_KDF_COST, Clock, Database, bearer
from tests.utils import run_server

pytest_plugins = ["tests.secret_watch"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(store: Store, clock: Clock) -> CredentialEngine:
    return CredentialEngine(store, kdf_cost=TEST_KDF_COST, clock=clock)


@pytest.fixture(params=["hashing", "reserved"])
async def engine_both_ways(
    request: pytest.FixtureRequest, store: Store, clock: Clock
) -> AsyncIterator[CredentialEngine]:
    """The engine on each of its paths: hashing each OTP when asked, and issuing OTPs hashed ahead
    (a reserve of 4, full when the test starts, refilled as the test takes from it)."""
    reserve = 4 if request.param == "reserved" else 0
    engine = CredentialEngine(store, kdf_cost=TEST_KDF_COST, clock=clock, reserve=reserve)
    if engine.reserve is not None:
        await engine.reserve.fill()
    yield engine
    await engine.close()


@pytest.fixture
def settings(database: Database, tmp_path: Path) -> Settings:
    return Settings().replace(
        database_url=database.url,
        database_schema=database.schema,
        data_dir=str(tmp_path),
        kdf_cost=TEST_KDF_COST,
        auth_hs256_secret=TEST_HS256_SECRET,
    )


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
