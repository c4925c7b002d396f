"""The device side over HTTP: POST /api/deviceBootstrap with Basic (accessId, OTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest

from gateway.app import create_app
from gateway.audit import AuditTrail
from gateway.domain import Caller, Credentials
from gateway.engine.engine import CredentialEngine
from gateway.settings import Settings
from gateway.store import Store
from tests.demo import READY_DEVICE, READY_REF, STUDY, TEST_AUDIT_KEY, TEST_KDF_COST, Clock
from tests.utils import run_server

pytestmark = pytest.mark.anyio

LOCKOUT = 3
REF = READY_REF


@pytest.fixture
def device_engine(store: Store, clock: Clock) -> CredentialEngine:
    return CredentialEngine(store, kdf_cost=TEST_KDF_COST, lockout_after=LOCKOUT, clock=clock)


@pytest.fixture
async def device_client(settings: Settings, device_engine: CredentialEngine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, backend=device_engine)
    async with run_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        yield client


async def issue(engine: CredentialEngine) -> Credentials:
    return await engine.regenerate(REF, Caller(request_id="test"))


async def bootstrap(client: httpx.AsyncClient, access_id: str, otp: str) -> httpx.Response:
    return await client.post("/api/deviceBootstrap", auth=(access_id, otp))


async def test_a_pair_bootstraps_once(device_client: httpx.AsyncClient, device_engine: CredentialEngine) -> None:
    pair = await issue(device_engine)
    first = await bootstrap(device_client, pair.access_id, pair.otp)
    assert first.status_code == 200
    assert first.json() == {"deviceId": pair.device_id, "studyId": STUDY, "mode": "active", "inventoryId": READY_DEVICE}
    again = await bootstrap(device_client, pair.access_id, pair.otp)
    assert again.status_code == 400


async def test_wrong_unknown_and_missing_credentials_are_401(
    device_client: httpx.AsyncClient, device_engine: CredentialEngine
) -> None:
    pair = await issue(device_engine)
    for response in (
        await bootstrap(device_client, pair.access_id, "WRONGOTP"),
        await bootstrap(device_client, "NOSUCH", pair.otp),
        await device_client.post("/api/deviceBootstrap"),
        await device_client.post("/api/deviceBootstrap", headers={"authorization": "Basic !!!"}),
    ):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Basic")


async def test_an_expired_pair_is_refused(
    device_client: httpx.AsyncClient, device_engine: CredentialEngine, clock: Clock
) -> None:
    pair = await issue(device_engine)
    clock.advance(timedelta(hours=24))
    assert (await bootstrap(device_client, pair.access_id, pair.otp)).status_code == 401


async def test_lockout_after_n_failures_until_regenerated(
    device_client: httpx.AsyncClient, device_engine: CredentialEngine, store: Store
) -> None:
    pair = await issue(device_engine)
    for _ in range(LOCKOUT):
        assert (await bootstrap(device_client, pair.access_id, "WRONGOTP")).status_code == 401
    # Locked: even the right OTP is refused now.
    assert (await bootstrap(device_client, pair.access_id, pair.otp)).status_code == 401
    fresh = await issue(device_engine)
    assert (await bootstrap(device_client, pair.access_id, pair.otp)).status_code == 401
    assert (await bootstrap(device_client, fresh.access_id, fresh.otp)).status_code == 200
    outcomes = [
        record.outcome for record in await AuditTrail(store, TEST_AUDIT_KEY).records() if record.action == "bootstrap"
    ]
    assert outcomes == ["WRONG_OTP", "WRONG_OTP", "LOCKED", "LOCKED", "UNKNOWN_ACCESS_ID", "SUCCESS"]


async def test_failures_below_the_limit_do_not_lock(
    device_client: httpx.AsyncClient, device_engine: CredentialEngine
) -> None:
    pair = await issue(device_engine)
    for _ in range(LOCKOUT - 1):
        await bootstrap(device_client, pair.access_id, "WRONGOTP")
    assert (await bootstrap(device_client, pair.access_id, pair.otp)).status_code == 200
