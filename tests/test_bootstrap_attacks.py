"""The device bootstrap endpoint under attack, over real HTTP: it needs no token, by design.

- A flood from one client is answered 429 with Retry-After, and the audit trail grows by the
  attempts within the limit plus one row, not by the flood.
- Every refusal costs one KDF check (counted, not timed): an unknown, locked, expired or wrong
  pair alike, so time tells a guesser nothing.
- However many wrong OTPs arrive at once, at most the lockout's number are checked against the
  pair, and the right OTP sent into the burst is never told "already bootstrapped".
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio
import httpx
import pytest
from sqlalchemy import select

from gateway.app import create_app
from gateway.audit import AuditTrail
from gateway.domain import Caller, Credentials
from gateway.engine import otp as otp_module
from gateway.engine.engine import CredentialEngine
from gateway.engine.tables import credentials
from gateway.settings import Settings
from gateway.store import Store
from tests.demo import READY_REF, TEST_AUDIT_KEY, TEST_KDF_COST, Clock
from tests.utils import run_server

pytestmark = pytest.mark.anyio

LOCKOUT = 10
CLIENT_LIMIT = 10


@pytest.fixture
def engine_under_attack(store: Store, clock: Clock) -> CredentialEngine:
    return CredentialEngine(store, kdf_cost=TEST_KDF_COST, lockout_after=LOCKOUT, clock=clock)


@asynccontextmanager
async def serving(settings: Settings, engine: CredentialEngine, client_limit: int) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway over `engine` on loopback, its client-address limit at `client_limit` (0: none)."""
    limited = settings.replace(bootstrap_rate_limit_client=client_limit, bootstrap_rate_limit_access_id=0)
    app = create_app(limited, backend=engine)
    limits = httpx.Limits(max_connections=64)
    async with run_server(app) as url, httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:
        yield http


@pytest.fixture
async def client(settings: Settings, engine_under_attack: CredentialEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(settings, engine_under_attack, CLIENT_LIMIT) as http:
        yield http


@pytest.fixture
async def open_client(settings: Settings, engine_under_attack: CredentialEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(settings, engine_under_attack, 0) as http:
        yield http


@pytest.fixture
def kdf_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The hash each OTP check ran against, in order."""
    checked: list[str] = []
    verify = otp_module.verify_otp

    def counting(otp: str, encoded: str) -> bool:
        checked.append(encoded)
        return verify(otp, encoded)

    monkeypatch.setattr(otp_module, "verify_otp", counting)
    return checked


async def issue(engine: CredentialEngine) -> Credentials:
    return await engine.regenerate(READY_REF, Caller(request_id="test"))


async def bootstrap(client: httpx.AsyncClient, access_id: str, otp: str) -> httpx.Response:
    return await client.post("/api/deviceBootstrap", auth=(access_id, otp))


async def stored_hash(store: Store, access_id: str) -> str:
    async with store.engine.connect() as conn:
        query = select(credentials.c.otp_hash).where(credentials.c.access_id == access_id)
        otp_hash: str = (await conn.execute(query)).scalar_one()
        return otp_hash


async def test_a_flood_from_one_client_is_answered_429_and_barely_audited(
    client: httpx.AsyncClient, store: Store
) -> None:
    statuses = [
        (await bootstrap(client, secrets.token_hex(3).upper(), secrets.token_hex(4).upper())) for _ in range(60)
    ]
    codes = [response.status_code for response in statuses]
    assert codes[:CLIENT_LIMIT] == [401] * CLIENT_LIMIT
    assert codes[CLIENT_LIMIT:] == [429] * (60 - CLIENT_LIMIT)
    limited = statuses[-1]
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    outcomes = [record.outcome for record in await AuditTrail(store, TEST_AUDIT_KEY).records()]
    assert outcomes == ["UNKNOWN_ACCESS_ID"] * CLIENT_LIMIT + ["RATE_LIMITED"]


async def test_every_refusal_costs_one_kdf_check(
    open_client: httpx.AsyncClient, engine_under_attack: CredentialEngine, clock: Clock, kdf_checks: list[str]
) -> None:
    client = open_client
    pair = await issue(engine_under_attack)
    kdf_checks.clear()
    assert (await bootstrap(client, "UNKNOWN", "ABCDEFGH")).status_code == 401
    assert (await bootstrap(client, pair.access_id, "WRONGOTP")).status_code == 401
    assert len(kdf_checks) == 2, "an unknown access ID must cost what a wrong OTP costs"

    for _ in range(LOCKOUT - 1):
        await bootstrap(client, pair.access_id, "WRONGOTP")
    kdf_checks.clear()
    assert (await bootstrap(client, pair.access_id, pair.otp)).status_code == 401  # locked: 401, even the right OTP
    assert len(kdf_checks) == 1
    assert kdf_checks[0] != await stored_hash(engine_under_attack.store, pair.access_id), "a locked pair was checked"

    expiring = await issue(engine_under_attack)
    clock.advance(timedelta(days=2))
    kdf_checks.clear()
    assert (await bootstrap(client, expiring.access_id, expiring.otp)).status_code == 401
    assert len(kdf_checks) == 1


async def test_a_burst_of_guesses_checks_at_most_the_lockout_and_the_right_otp_is_never_400(
    open_client: httpx.AsyncClient, engine_under_attack: CredentialEngine, kdf_checks: list[str]
) -> None:
    http = open_client
    for _ in range(3):
        pair = await issue(engine_under_attack)
        real_hash = await stored_hash(engine_under_attack.store, pair.access_id)
        kdf_checks.clear()
        answers: dict[str, int] = {}

        async def guess(index: int, otp: str, pair: Credentials = pair, answers: dict[str, int] = answers) -> None:
            answers[f"{index}"] = (await bootstrap(http, pair.access_id, otp)).status_code

        async with anyio.create_task_group() as tasks:
            for index in range(40):
                tasks.start_soon(guess, index, f"WRONG{index:03d}")
                if index == 20:
                    tasks.start_soon(guess, 999, pair.otp)
        against_the_pair = sum(1 for encoded in kdf_checks if encoded == real_hash)
        assert against_the_pair <= LOCKOUT, f"{against_the_pair} guesses were checked"
        assert answers["999"] in {200, 401}
        assert all(status == 401 for key, status in answers.items() if key != "999")
