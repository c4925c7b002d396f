"""The local credential engine over a real store (SQLite file and PostgreSQL): rules and invariants."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import anyio
import pytest
from sqlalchemy import func, select

from gateway.domain import Caller, Credentials, DeviceRef, ErrorCode, Refusal
from gateway.engine import otp
from gateway.engine.engine import BootstrapOutcome, CredentialEngine
from gateway.engine.tables import credentials
from gateway.store import Store
from tests.demo import DEMO_REFUSALS, OTHER_SUBJECT, READY_DEVICE, Clock, pair_works, ref_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def engine(engine_both_ways: CredentialEngine) -> CredentialEngine:
    """Every test here on both of the engine's paths (`hashing`, `reserved`: tests/conftest.py)."""
    return engine_both_ways


CALLER = Caller(request_id="test")


async def refusal_of(engine: CredentialEngine, device_ref: DeviceRef) -> ErrorCode:
    with pytest.raises(Refusal) as caught:
        await engine.regenerate(device_ref, CALLER)
    return caught.value.code


# The demo's refusals, and the order of the rules: the earlier rule wins when several fail at once.
ORDER = [
    pytest.param({"mode": "TEST", "subjectId": "F" * 32}, ErrorCode.MHEALTH_SETTINGS_NOT_FOUND, id="order-mhealth"),
    pytest.param(
        {"mSubjectId": "NOBODY", "inventoryId": "DEMO-UNKNOWN"}, ErrorCode.INVALID_SUBJECT, id="order-subject"
    ),
    pytest.param(
        {"subjectId": OTHER_SUBJECT, "mSubjectId": "MSUBJECT-002", "inventoryId": "DEMO-UNREGISTERED"},
        ErrorCode.DEVICE_NOT_REGISTERED,
        id="order-registered-before-dispensed",
    ),
]


def test_draws_are_uniform_over_the_alphabet() -> None:
    symbols = Counter("".join(otp.draw(otp.OTP_LENGTH) for _ in range(100_000)))
    expected = 100_000 * otp.OTP_LENGTH / len(otp.ALPHABET)  # ~25,800 each; one standard deviation is ~160
    assert set(symbols) == set(otp.ALPHABET)
    assert all(abs(count - expected) < 0.05 * expected for count in symbols.values()), symbols


def test_a_draw_drops_the_bytes_that_would_favour_some_symbols(monkeypatch: pytest.MonkeyPatch) -> None:
    """256 is not a multiple of 31: bytes from 248 up would favour the first eight symbols, so they are dropped."""
    reads = iter([bytes([255, 248, 0, 30, 31, 249]), bytes([247, 62, 93, 124])])
    monkeypatch.setattr("secrets.token_bytes", lambda n: next(reads))
    a = otp.ALPHABET
    assert otp.draw(6) == a[0] + a[30] + a[0] + a[247 % 31] + a[0] + a[0]


@pytest.mark.parametrize(("overrides", "expected"), DEMO_REFUSALS + ORDER)
async def test_rules_refuse_in_order(engine: CredentialEngine, overrides: dict[str, Any], expected: ErrorCode) -> None:
    assert await refusal_of(engine, ref_for(**overrides)) == expected


@pytest.mark.parametrize("inventory_id", [READY_DEVICE, "DEMO-CLOUD-READY"])
async def test_new_pair_has_the_contracts_shape(engine: CredentialEngine, clock: Clock, inventory_id: str) -> None:
    issued = await engine.regenerate(ref_for(inventoryId=inventory_id), CALLER)
    assert len(issued.access_id) == otp.ACCESS_ID_LENGTH
    assert len(issued.otp) == otp.OTP_LENGTH
    assert set(issued.access_id + issued.otp) <= set(otp.ALPHABET)
    assert not set("0O1IL") & set(otp.ALPHABET)
    assert issued.expires_at == clock.now + timedelta(hours=24)
    assert len(issued.device_id) == 32
    assert issued.otp not in repr(issued)


async def test_a_new_pair_replaces_the_old_one(engine: CredentialEngine) -> None:
    first = await engine.regenerate(ref_for(), CALLER)
    assert await pair_works(engine, first.access_id, first.otp)
    second = await engine.regenerate(ref_for(), CALLER)
    assert (second.access_id, second.otp) != (first.access_id, first.otp)
    assert not await pair_works(engine, first.access_id, first.otp)
    assert await pair_works(engine, second.access_id, second.otp)
    assert not await pair_works(engine, second.access_id, first.otp)


async def test_the_store_holds_only_a_salted_hash(engine: CredentialEngine) -> None:
    issued = [
        await engine.regenerate(ref_for(inventoryId=device), CALLER) for device in (READY_DEVICE, "DEMO-CLOUD-READY")
    ]
    async with engine.store.engine.connect() as conn:
        rows = (await conn.execute(select(credentials))).all()
    assert len(rows) == 2
    stored = " ".join(str(value) for row in rows for value in row)
    for pair in issued:
        assert pair.otp not in stored
    hashes = [row.otp_hash for row in rows]
    assert all(h.startswith("scrypt$") for h in hashes)
    salts = {h.split("$")[4] for h in hashes}
    assert len(salts) == 2


async def test_expiry_follows_the_injected_clock(engine: CredentialEngine, clock: Clock) -> None:
    issued = await engine.regenerate(ref_for(), CALLER)
    clock.advance(timedelta(hours=24) - timedelta(seconds=1))
    assert await pair_works(engine, issued.access_id, issued.otp)
    clock.advance(timedelta(seconds=1))
    assert not await pair_works(engine, issued.access_id, issued.otp)
    assert (await engine.bootstrap(issued.access_id, issued.otp)).outcome is BootstrapOutcome.EXPIRED


async def test_the_lifetime_is_a_setting(store: Store, clock: Clock) -> None:
    short = CredentialEngine(store, otp_ttl=timedelta(minutes=5), kdf_cost=4, clock=clock)
    issued = await short.regenerate(ref_for(), CALLER)
    assert issued.expires_at == clock.now + timedelta(minutes=5)


async def test_an_otp_works_once(engine: CredentialEngine) -> None:
    issued = await engine.regenerate(ref_for(), CALLER)
    assert (await engine.bootstrap(issued.access_id, "WRONGOTP")).outcome is BootstrapOutcome.WRONG_OTP
    assert (await engine.bootstrap(issued.access_id, issued.otp)).outcome is BootstrapOutcome.BOOTSTRAPPED
    assert (await engine.bootstrap(issued.access_id, issued.otp)).outcome is BootstrapOutcome.ALREADY_BOOTSTRAPPED
    assert not await pair_works(engine, issued.access_id, issued.otp)


async def test_concurrent_regenerations_leave_exactly_one_working_pair(engine: CredentialEngine) -> None:
    issued: list[Credentials] = []

    async def one() -> None:
        issued.append(await engine.regenerate(ref_for(), CALLER))

    async with anyio.create_task_group() as tasks:
        for _ in range(20):
            tasks.start_soon(one)
    assert len(issued) == 20
    assert len({pair.access_id for pair in issued}) == 20
    working = [pair for pair in issued if await pair_works(engine, pair.access_id, pair.otp)]
    assert len(working) == 1
    async with engine.store.engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(credentials))).scalar_one()
    assert count == 1


async def test_a_broken_store_is_an_internal_server_error(engine: CredentialEngine) -> None:
    async with engine.store.engine.begin() as conn:
        await conn.run_sync(credentials.drop)
    assert await refusal_of(engine, ref_for()) == ErrorCode.INTERNAL_SERVER_ERROR


async def test_an_access_id_drawn_twice_is_drawn_again(
    engine: CredentialEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await engine.regenerate(ref_for(), CALLER)
    draws = iter([first.access_id, "ZZZZZZZZZZZZ"])  # another device's pair holds the first draw
    monkeypatch.setattr("gateway.engine.engine.new_access_id", lambda: next(draws))
    second = await engine.regenerate(ref_for(inventoryId="DEMO-CLOUD-READY"), CALLER)
    assert second.access_id == "ZZZZZZZZZZZZ"
    assert next(draws, None) is None  # both drawn: the first refused by the store (IntegrityError), nothing kept
    assert await pair_works(engine, first.access_id, first.otp)
    assert await pair_works(engine, second.access_id, second.otp)
