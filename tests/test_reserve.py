"""`OtpReserve`: OTPs hashed ahead of need, each issued at most once, and the engine's use of it.

The engine's rules and invariants run on both of its paths in tests/test_engine.py (its `engine`
fixture: `hashing` and `reserved`); here, what only the reserve does: it fills lazily and in few
hand-offs, gives out each OTP once, takes back only what was never stored, and stops with `close`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
from sqlalchemy import select

from gateway.domain import Caller, ErrorCode, Refusal
from gateway.engine import otp
from gateway.engine.engine import CredentialEngine
from gateway.engine.reserve import HashedOtp, OtpReserve
from gateway.engine.tables import credentials
from gateway.store import Store
from tests.demo import TEST_KDF_COST, Clock, pair_works, ref_for

pytestmark = pytest.mark.anyio

CALLER = Caller(request_id="test")


class CountingPool(otp.KdfPool):
    """A real pool that counts its hand-offs."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.hashes = 0
        self.hand_offs = 0

    async def hash(self, otp_text: str, cost: int) -> str:
        self.hashes += 1
        return await super().hash(otp_text, cost)

    async def hash_many(self, otps: Sequence[str], cost: int) -> list[str]:
        self.hand_offs += 1
        return await super().hash_many(otps, cost)


@pytest.fixture
async def pool() -> AsyncIterator[CountingPool]:
    pool = CountingPool(2)
    yield pool
    pool.close()


async def test_the_reserve_fills_only_when_first_asked_and_gives_each_otp_once(pool: CountingPool) -> None:
    reserve = OtpReserve(pool, TEST_KDF_COST, 40)
    assert len(reserve) == 0
    assert pool.hand_offs == 0
    assert reserve.take() is None  # empty: the caller hashes its own, then asks for a refill
    assert pool.hand_offs == 0
    await reserve.fill()
    assert len(reserve) == 40
    assert pool.hand_offs == 1  # at cost 4 one hand-off carries every OTP the reserve lacks
    taken = [reserve.take() for _ in range(40)]
    ready = [each for each in taken if each is not None]
    assert len(ready) >= 40 - len(reserve)
    assert len({each.otp for each in ready}) == len(ready)  # never the same OTP twice
    for each in ready[:5]:
        assert len(each.otp) == otp.OTP_LENGTH
        assert set(each.otp) <= set(otp.ALPHABET)
        assert each.otp_hash.startswith(f"scrypt${TEST_KDF_COST}$")
        assert otp.verify_otp(each.otp, each.otp_hash)
        assert each.otp not in repr(each)
    await reserve.close()


@pytest.mark.parametrize(
    ("cost", "size", "per_hand_off"), [(4, 64, 64), (4, 200, 64), (4, 8, 8), (8, 64, 4), (14, 64, 1)]
)
def test_a_hand_off_carries_a_few_milliseconds_of_hashing(cost: int, size: int, per_hand_off: int) -> None:
    assert OtpReserve(otp.KdfPool(1), cost, size).per_hand_off == per_hand_off


async def test_a_refill_uses_every_worker_when_hashes_are_dear(pool: CountingPool) -> None:
    reserve = OtpReserve(pool, 10, 5)  # one OTP a hand-off
    await reserve.fill()
    assert len(reserve) == 5
    assert pool.hand_offs == 5  # 2 + 2 + 1: up to `workers` at once
    await reserve.close()


async def test_an_otp_given_back_is_the_next_one_out_and_the_reserve_keeps_its_bound(pool: CountingPool) -> None:
    reserve = OtpReserve(pool, TEST_KDF_COST, 3)
    await reserve.fill()
    first = reserve.take()
    assert first is not None
    reserve.give_back(first)
    assert reserve.take() is first
    reserve.give_back(first)
    extra = HashedOtp("EXTRAOTP", "scrypt$…")
    reserve.give_back(extra)  # full: the newest OTP goes
    assert len(reserve) == 3
    assert reserve.take() is extra
    assert reserve.take() is first
    await reserve.close()


async def test_close_stops_the_refill_and_forgets_the_otps(pool: CountingPool) -> None:
    reserve = OtpReserve(pool, 12, 4)  # dear enough that the refill is still under way
    reserve.refill()
    await reserve.close()
    assert len(reserve) == 0
    assert reserve.take() is None
    reserve.give_back(HashedOtp("LATEOTPS", "scrypt$…"))
    assert len(reserve) == 0


def test_a_reserve_holds_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least one"):
        OtpReserve(otp.KdfPool(1), 4, 0)


@pytest.fixture
async def reserved(store: Store, clock: Clock, pool: CountingPool) -> AsyncIterator[CredentialEngine]:
    engine = CredentialEngine(store, kdf_cost=TEST_KDF_COST, clock=clock, kdf=pool, reserve=4)
    assert engine.reserve is not None
    await engine.reserve.fill()
    yield engine
    await engine.close()


async def test_a_regeneration_issues_a_reserved_otp_without_waiting_for_the_kdf(
    reserved: CredentialEngine, pool: CountingPool
) -> None:
    assert reserved.reserve is not None
    hand_offs = pool.hand_offs
    issued = await reserved.regenerate(ref_for(), CALLER)
    assert pool.hashes == 0  # the request hashed nothing itself
    assert await pair_works(reserved, issued.access_id, issued.otp)
    await reserved.reserve.fill()  # the refill the take started
    assert pool.hand_offs == hand_offs + 1


async def next_out(engine: CredentialEngine) -> HashedOtp:
    """The OTP the engine's (filled) reserve gives out next, left in it."""
    assert engine.reserve is not None
    await engine.reserve.fill()
    ready = engine.reserve.take()
    assert ready is not None
    engine.reserve.give_back(ready)
    return ready


async def test_a_refused_attempt_gives_its_otp_back(reserved: CredentialEngine) -> None:
    upcoming = await next_out(reserved)
    with pytest.raises(Refusal) as refused:
        await reserved.regenerate(ref_for(studyId="0" * 32), CALLER)
    assert refused.value.code is ErrorCode.STUDY_NOT_FOUND
    issued = await reserved.regenerate(ref_for(), CALLER)
    assert issued.otp == upcoming.otp  # never left the gateway: issued now, once


async def test_an_otp_whose_unit_failed_is_never_issued(reserved: CredentialEngine) -> None:
    doomed = await next_out(reserved)
    async with reserved.store.engine.begin() as conn:
        await conn.run_sync(credentials.drop)
    with pytest.raises(Refusal) as failed:
        await reserved.regenerate(ref_for(), CALLER)
    assert failed.value.code is ErrorCode.INTERNAL_SERVER_ERROR
    async with reserved.store.engine.begin() as conn:
        await conn.run_sync(credentials.create)
    assert reserved.reserve is not None
    await reserved.reserve.fill()
    ready = [reserved.reserve.take() for _ in range(len(reserved.reserve))]
    assert doomed.otp not in {each.otp for each in ready if each is not None}


async def test_an_empty_reserve_falls_back_to_hashing_per_request(
    reserved: CredentialEngine, pool: CountingPool
) -> None:
    assert reserved.reserve is not None
    await reserved.reserve.close()  # nothing ready, no refill
    issued = await reserved.regenerate(ref_for(), CALLER)
    assert pool.hashes == 1
    assert await pair_works(reserved, issued.access_id, issued.otp)
    async with reserved.store.engine.connect() as conn:
        stored = (await conn.execute(select(credentials.c.access_id))).scalars().all()
    assert stored == [issued.access_id]


async def test_the_ready_otps_and_the_misses_are_metrics(pool: CountingPool) -> None:
    from prometheus_client import REGISTRY

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    misses = sample("gateway_otp_reserve_misses_total")
    reserve = OtpReserve(pool, TEST_KDF_COST, 6)
    assert reserve.take() is None
    assert sample("gateway_otp_reserve_misses_total") == misses  # not until the caller hashes its own
    reserve.missed()
    assert sample("gateway_otp_reserve_misses_total") == misses + 1
    await reserve.fill()
    assert sample("gateway_otp_reserve") == 6
    taken = reserve.take()
    assert taken is not None
    assert sample("gateway_otp_reserve") == 5
    reserve.give_back(taken)
    assert sample("gateway_otp_reserve") == 6
    assert sample("gateway_otp_reserve_misses_total") == misses + 1
    await reserve.close()
    assert sample("gateway_otp_reserve") == 0


async def test_an_attempt_that_finds_none_ready_hashes_first_then_the_reserve_refills(
    store: Store, clock: Clock, pool: CountingPool
) -> None:
    """With nothing ready (the first regeneration), the attempt's own hash is not queued behind a
    refill: the refill starts once the attempt has ended."""
    engine = CredentialEngine(store, kdf_cost=TEST_KDF_COST, clock=clock, kdf=pool, reserve=4)
    assert engine.reserve is not None
    issued = await engine.regenerate(ref_for(), CALLER)
    assert pool.hashes == 1
    assert pool.hand_offs == 0  # the refill had not begun while the attempt hashed
    assert await pair_works(engine, issued.access_id, issued.otp)
    await engine.reserve.fill()
    assert len(engine.reserve) == 4
    await engine.close()


async def test_refusals_alone_hash_nothing_ahead(store: Store, clock: Clock, pool: CountingPool) -> None:
    """The reserve starts filling once a regeneration has needed a hash: a gateway that only ever
    refuses (an unknown study, say) spends no KDF time at all."""
    engine = CredentialEngine(store, kdf_cost=TEST_KDF_COST, clock=clock, kdf=pool, reserve=4)
    assert engine.reserve is not None
    for _ in range(3):
        with pytest.raises(Refusal) as refused:
            await engine.regenerate(ref_for(studyId="0" * 32), CALLER)
        assert refused.value.code is ErrorCode.STUDY_NOT_FOUND
    await engine.close()  # waits for a refill, had one started
    assert (pool.hashes, pool.hand_offs) == (0, 0)


async def test_a_miss_is_counted_only_when_a_regeneration_hashes_its_own_otp(
    store: Store, clock: Clock, pool: CountingPool
) -> None:
    """`gateway_otp_reserve_misses_total` counts regenerations that hashed an OTP of their own (the
    reserve may be too small). A refusal with none ready hashes nothing and starts no refill, so
    the reserve stays empty: counted, a gateway that only refuses would count a miss for each."""
    from prometheus_client import REGISTRY

    def misses() -> float:
        return REGISTRY.get_sample_value("gateway_otp_reserve_misses_total") or 0.0

    engine = CredentialEngine(store, kdf_cost=TEST_KDF_COST, clock=clock, kdf=pool, reserve=4)
    before = misses()
    for _ in range(3):
        with pytest.raises(Refusal):
            await engine.regenerate(ref_for(studyId="0" * 32), CALLER)
    assert (pool.hashes, misses()) == (0, before)
    await engine.regenerate(ref_for(), CALLER)  # none ready: it hashes its own
    assert (pool.hashes, misses()) == (1, before + 1)
    await engine.close()
