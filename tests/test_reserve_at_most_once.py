"""`OtpReserve` under stress: each OTP issued at most once, a refusal costs no hash, `close` waits.

Every OTP ever stored is recorded in a history table written in the same unit of work as the pair
(rolled back with it), so that "each OTP is stored at most once, ever" and "an OTP given back was
never stored" can be checked after concurrent, cancelled and failing regenerations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import anyio
import pytest
from sqlalchemy import Column, Connection, MetaData, String, Table, event, select
from sqlalchemy.exc import OperationalError

from gateway.audit import AuditTrail, audit_events
from gateway.domain import Caller, Credentials, ErrorCode, Principal, RateLimited, Refusal
from gateway.engine import engine as engine_module
from gateway.engine import otp, tables
from gateway.engine.engine import CredentialEngine
from gateway.engine.reserve import HashedOtp, OtpReserve
from gateway.rate_limits import Limit, RateLimiter
from gateway.regeneration import DeviceRequest, Policy, RegenerationService
from gateway.settings import Settings
from gateway.store import Store
from tests.demo import (
    DEMO_REFUSALS,
    READY_DEVICE,
    STUDY,
    SUBJECT,
    TEST_AUDIT_KEY,
    TEST_KDF_COST,
    Clock,
    pair_works,
    ref_for,
)

pytestmark = pytest.mark.anyio

CALLER = Caller(request_id="review")
EVERYTHING = Principal("site-user", "site-app", {"*": {"*": frozenset({"DeviceActionsPost"})}})

_history_metadata = MetaData()
otp_history = Table("otp_history", _history_metadata, Column("otp_hash", String, nullable=False))


class TrackingReserve(OtpReserve):
    """A real reserve that records what it gave out and took back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.taken: list[HashedOtp] = []
        self.given_back: list[HashedOtp] = []
        self.out: set[int] = set()  # ids of the OTPs taken and not given back

    def take(self) -> HashedOtp | None:
        taken = super().take()
        if taken is not None:
            assert id(taken) not in self.out, "an OTP handed out twice"
            self.out.add(id(taken))
            self.taken.append(taken)
        return taken

    def give_back(self, taken: HashedOtp) -> None:
        assert id(taken) in self.out, "an OTP given back that was not out (given back twice?)"
        self.out.discard(id(taken))
        self.given_back.append(taken)
        super().give_back(taken)


@pytest.fixture
async def history(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every otp_hash written by `replace_pair`, in the pair's own transaction."""
    async with store.engine.begin() as conn:
        await conn.run_sync(_history_metadata.create_all)
    original = tables.replace_pair

    def recording(conn: Connection, ref: Any, **values: Any) -> None:
        original(conn, ref, **values)
        conn.execute(otp_history.insert().values(otp_hash=values["otp_hash"]))

    monkeypatch.setattr(tables, "replace_pair", recording)


async def stored_hashes(store: Store) -> list[str]:
    async with store.engine.connect() as conn:
        return list((await conn.execute(select(otp_history.c.otp_hash))).scalars())


def tracked_engine(
    store: Store, clock: Clock, size: int, workers: int = 2, cost: int = TEST_KDF_COST
) -> CredentialEngine:
    engine = CredentialEngine(store, kdf_cost=cost, clock=clock, kdf=otp.KdfPool(workers), reserve=size)
    engine.reserve = TrackingReserve(engine.kdf, cost, size)
    return engine


async def shut(engine: CredentialEngine) -> None:
    """Stop the engine's reserve, then let its KDF threads go (the pool is the test's)."""
    await engine.close()
    engine.kdf.close()


def service(
    store: Store, engine: CredentialEngine, clock: Clock, *, device: int = 1000, caller: int = 1000
) -> RegenerationService:
    policy = Policy(
        require_principal=True,
        device_limit=Limit("device", device, timedelta(minutes=15)),
        caller_limit=Limit("caller", caller, timedelta(minutes=15)),
    )
    return RegenerationService(engine, AuditTrail(store, TEST_AUDIT_KEY), RateLimiter(store, clock), policy, clock)


READY = [READY_DEVICE, "DEMO-CLOUD-READY"]
REFUSED = ["DEMO-UNKNOWN", "DEMO-IN-STOCK", "DEMO-OTHER-SUBJECT", "DEMO-NO-CONNECTION"]


def request_for(inventory_id: str, study: str = STUDY) -> DeviceRequest:
    return DeviceRequest(study, "active", SUBJECT, inventory_id, "MSUBJECT-001")


async def check_invariants(engine: CredentialEngine, issued: Sequence[Credentials]) -> None:
    reserve = engine.reserve
    hashes = await stored_hashes(engine.store)
    counts: dict[str, int] = {}
    for each in hashes:
        counts[each] = counts.get(each, 0) + 1
    assert all(count == 1 for count in counts.values()), "an OTP stored twice"
    otps = [each.otp for each in issued]
    assert len(otps) == len(set(otps)), "an OTP issued twice"
    if reserve is None:
        return
    assert isinstance(reserve, TrackingReserve)
    ready_hashes = {each.otp_hash for each in reserve._ready}
    assert not ready_hashes & set(counts), "an OTP in the reserve was stored"
    by_otp = {each.otp: each for each in reserve.taken}
    for credential in issued:  # an OTP a caller got from the reserve was stored with its hash
        if credential.otp in by_otp:
            assert by_otp[credential.otp].otp_hash in counts


class ClientGone(Exception):
    """A caller cancelled while its unit waited in the store's queue (or ran in a batch)."""


@pytest.mark.parametrize("size", [2, 0], ids=["reserve-2", "no-reserve"])
@pytest.mark.parametrize("cancel", [False, True], ids=["whole", "cancelled"])
async def test_many_concurrent_regenerations_with_a_tiny_reserve(
    store: Store, clock: Clock, history: None, cancel: bool, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent regenerations of a few ready devices and refused ones, with a reserve of 2 (refilled
    while they run), some callers gone mid-way: on SQLite anywhere (a random timeout around the whole
    request), on PostgreSQL only while waiting for the store's writer (cancelling an asyncpg query
    in flight breaks its connection, with or without the reserve: not what is under review)."""
    if size:
        engine = tracked_engine(store, clock, size=size, workers=2)
    else:
        engine = CredentialEngine(store, kdf_cost=TEST_KDF_COST, clock=clock, kdf=otp.KdfPool(2))
    svc = service(store, engine, clock)
    issued: list[Credentials] = []
    codes: list[ErrorCode] = []
    rng = random.Random(1234)
    postgres = store.dialect == "postgresql"
    if cancel and postgres:
        submit = store.submit

        async def impatient(unit: Any) -> Any:
            if rng.random() < 0.3:
                with anyio.move_on_after(rng.random() * 0.01):
                    return await submit(unit)
                raise ClientGone
            return await submit(unit)

        monkeypatch.setattr(store, "submit", impatient)

    async def attempt(index: int) -> None:
        device = rng.choice(READY + REFUSED)
        study = STUDY if rng.random() < 0.8 else "0" * 32
        timeout = rng.random() * 0.02 if cancel and not postgres and index % 3 == 0 else 60
        try:
            with anyio.move_on_after(timeout):
                await anyio.sleep(rng.random() * 0.005)
                got = await svc.regenerate(request_for(device, study), Caller(f"r{index}", principal=EVERYTHING))
                issued.append(got)
        except Refusal as refusal:
            codes.append(refusal.code)
        except ClientGone:
            pass

    try:
        for _round in range(4):
            async with anyio.create_task_group() as tasks:
                for index in range(60):
                    tasks.start_soon(attempt, index)
        monkeypatch.undo()
        assert issued
        assert codes
        await check_invariants(engine, issued)
        if engine.reserve is not None:
            await engine.reserve.fill()
        await check_invariants(engine, issued)
        for each in issued[-10:]:  # the pairs still current work with the OTPs their callers got
            if await pair_works(engine, each.access_id, each.otp):
                continue
            access_id = each.access_id
            found = await engine.store.read(lambda conn, a=access_id: tables.find_pair(conn, a))  # type: ignore[misc]
            assert found is None  # replaced since
    finally:
        await shut(engine)


async def test_an_access_id_taken_five_times_gives_the_otp_back_unstored(
    store: Store, clock: Clock, history: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = tracked_engine(store, clock, size=2)
    try:
        other = await engine.regenerate(ref_for(inventoryId="DEMO-CLOUD-READY"), CALLER)
        assert engine.reserve is not None
        await engine.reserve.fill()
        with monkeypatch.context() as patched:
            patched.setattr(engine_module, "new_access_id", lambda: other.access_id)
            with pytest.raises(Refusal) as refused:
                await engine.regenerate(ref_for(), CALLER)
        assert refused.value.code is ErrorCode.INTERNAL_SERVER_ERROR
        reserve = engine.reserve
        assert isinstance(reserve, TrackingReserve)
        given = reserve.given_back[-1]
        assert given.otp_hash not in await stored_hashes(store)
        # The collision twice, then a free id: the same OTP issued, once.
        draws = iter([other.access_id, other.access_id])
        with monkeypatch.context() as patched:
            patched.setattr(engine_module, "new_access_id", lambda: next(draws, otp.new_access_id()))
            issued = await engine.regenerate(ref_for(), CALLER)
        assert issued.otp == given.otp
        assert await pair_works(engine, issued.access_id, issued.otp)
        await check_invariants(engine, [other, issued])
    finally:
        await shut(engine)


async def test_a_commit_that_fails_after_committing_never_gives_the_otp_back(
    store: Store, clock: Clock, history: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worst failed commit: the pair was committed, the caller was told it failed."""
    engine = tracked_engine(store, clock, size=2)
    svc = service(store, engine, clock)
    try:
        assert engine.reserve is not None
        await engine.reserve.fill()
        original = store._run

        async def committed_then_failed(units: Any) -> Any:
            await original(units)
            raise OperationalError("COMMIT", {}, Exception("connection lost after commit"))

        with monkeypatch.context() as patched:
            patched.setattr(store, "_run", committed_then_failed)
            with pytest.raises(Refusal) as refused:
                await svc.regenerate(request_for(READY_DEVICE), Caller("x", principal=EVERYTHING))
        assert refused.value.code is ErrorCode.INTERNAL_SERVER_ERROR
        reserve = engine.reserve
        assert isinstance(reserve, TrackingReserve)
        assert reserve.given_back == []
        stored = await stored_hashes(store)
        assert len(stored) == 1
        later = [await engine.regenerate(ref_for(), CALLER) for _ in range(6)]
        await check_invariants(engine, later)
        assert stored[0] not in {each.otp_hash for each in reserve.taken[1:]}
    finally:
        await shut(engine)


async def test_a_refused_commit_drops_the_otps(store: Store, clock: Clock, history: None) -> None:
    engine = tracked_engine(store, clock, size=4)
    svc = service(store, engine, clock)

    def refuse_commit(_connection: Any) -> None:
        raise OperationalError("COMMIT", {}, Exception("disk I/O error"))

    try:
        assert engine.reserve is not None
        await engine.reserve.fill()
        event.listen(store.write_engine, "commit", refuse_commit)
        try:
            async with anyio.create_task_group() as tasks:
                for index in range(6):
                    tasks.start_soon(
                        _swallow,
                        svc.regenerate(request_for(READY[index % 2]), Caller(f"{index}", principal=EVERYTHING)),
                    )
        finally:
            event.remove(store.write_engine, "commit", refuse_commit)
        reserve = engine.reserve
        assert isinstance(reserve, TrackingReserve)
        assert reserve.given_back == []
        assert await stored_hashes(store) == []
    finally:
        await shut(engine)


async def _swallow(coroutine: Any) -> None:
    with contextlib.suppress(Refusal):
        await coroutine


async def test_a_client_gone_while_its_unit_is_queued(store: Store, clock: Clock, history: None) -> None:
    """The caller is cancelled while its unit waits for the writer: nothing stored, nothing given back."""
    engine = tracked_engine(store, clock, size=4)
    try:
        assert engine.reserve is not None
        await engine.reserve.fill()
        gate = asyncio.Event()
        original = store._run

        async def slow_run(units: Any) -> Any:
            await gate.wait()
            return await original(units)

        store._run = slow_run  # type: ignore[method-assign]
        first = asyncio.create_task(engine.regenerate(ref_for(), CALLER))  # holds the writer
        await asyncio.sleep(0.01)
        queued = asyncio.create_task(engine.regenerate(ref_for(inventoryId="DEMO-CLOUD-READY"), CALLER))
        await asyncio.sleep(0.01)
        queued.cancel()
        gate.set()
        issued = await first
        with pytest.raises(asyncio.CancelledError):
            await queued
        del store._run
        reserve = engine.reserve
        assert isinstance(reserve, TrackingReserve)
        assert reserve.given_back == []
        assert len(await stored_hashes(store)) == 1
        await check_invariants(engine, [issued])
    finally:
        await shut(engine)


# ------------------------------------------------------------------------------------------------
# Parity: the same answers with GATEWAY_OTP_RESERVE=0 and the default


async def answers_of(store: Store, clock: Clock, reserve: int, who: str) -> list[Any]:
    engine = CredentialEngine(store, kdf_cost=TEST_KDF_COST, clock=clock, reserve=reserve)
    try:
        if engine.reserve is not None:
            await engine.reserve.fill()
        svc = service(store, engine, clock, caller=len(DEMO_REFUSALS) + 2)
        principal = Principal(who, "app", {"*": {"*": frozenset({"DeviceActionsPost"})}})
        answers: list[Any] = []
        cases: list[dict[str, Any]] = [param.values[0] for param in DEMO_REFUSALS] + [{}, {}]  # type: ignore[assignment]  # the last one is over the caller's limit
        for overrides in [*cases, {}]:
            values = ref_for(**overrides)
            request = DeviceRequest(
                values.study_id, values.mode.value, values.subject_id, values.inventory_id, values.m_subject_id
            )
            try:
                got = await svc.regenerate(request, Caller(f"{who}-{len(answers)}", principal=principal))
                answers.append(("ok", len(got.otp), got.device_id, got.expires_at))
            except RateLimited as limited:
                answers.append(("limited", limited.retry_after_seconds))
            except Refusal as refusal:
                answers.append(refusal.code)
        async with store.engine.connect() as conn:
            outcomes = (
                (
                    await conn.execute(
                        select(audit_events.c.outcome).where(audit_events.c.caller == who).order_by(audit_events.c.seq)
                    )
                )
                .scalars()
                .all()
            )
        return [answers, list(outcomes)]
    finally:
        await shut(engine)


async def test_answers_are_the_same_with_and_without_the_reserve(store: Store, clock: Clock) -> None:
    default = Settings().otp_reserve
    assert default == 64
    without = await answers_of(store, clock, 0, "without")
    with_reserve = await answers_of(store, clock, default, "with")
    assert without == with_reserve
    assert without[0][-1][0] == "limited"


# ------------------------------------------------------------------------------------------------
# Close and failing refills


class _SlowHashes:
    """`_hash_each` replaced: each call takes `seconds` in its thread, and records when it ends."""

    def __init__(self, seconds: float, fail_first: bool = False) -> None:
        self.seconds = seconds
        self.fail_first = fail_first
        self.calls = 0
        self.running = 0
        self.lock = threading.Lock()

    def __call__(self, otps: Sequence[str], cost: int) -> list[str]:
        with self.lock:
            self.calls += 1
            call = self.calls
            self.running += 1
        try:
            if self.fail_first and call == 1:
                raise RuntimeError("the KDF failed")
            time.sleep(self.seconds)
            return [otp.hash_otp(each, TEST_KDF_COST) for each in otps]
        finally:
            with self.lock:
                self.running -= 1


async def test_close_waits_for_the_hash_under_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """`close`: "Stop refilling (waiting for a hash under way to end)"; and the KdfPool: "A cancelled
    caller still waits for its hash to finish, so the threads never have more than `workers` hashes"."""
    slow = _SlowHashes(0.3)
    monkeypatch.setattr(otp, "_hash_each", slow)
    pool = otp.KdfPool(1)
    reserve = OtpReserve(pool, 14, 2)
    try:
        assert reserve.take() is None
        reserve.refill()
        await asyncio.sleep(0.05)
        assert slow.running == 1
        await reserve.close()
        assert pool.busy == 0
        assert slow.running == 0, "close returned while its refill's hash still ran on a KDF thread"
    finally:
        pool.close()
        while slow.running:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_a_refill_job_that_fails_leaves_no_task_behind(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    slow = _SlowHashes(0.3, fail_first=True)
    monkeypatch.setattr(otp, "_hash_each", slow)
    pool = otp.KdfPool(2)
    reserve = OtpReserve(pool, 14, 2)  # one OTP a job, two jobs at once
    try:
        with caplog.at_level(logging.ERROR):
            assert reserve.take() is None
            reserve.refill()
            refill = reserve._refill
            assert refill is not None
            await asyncio.wait([refill])
        assert "could not be refilled" in caplog.text
        await reserve.close()
        others = {task for task in asyncio.all_tasks() if "hash" in repr(task) or "refill" in repr(task)}
        assert not others, f"tasks still pending after close: {others}"
    finally:
        pool.close()
        while slow.running:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_a_failing_refill_is_logged_and_regenerations_still_work(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engine = CredentialEngine(store, kdf_cost=TEST_KDF_COST, clock=clock, reserve=4)
    seen: list[str] = []

    async def broken(otps: Sequence[str], cost: int) -> list[str]:
        seen.extend(otps)
        raise RuntimeError("no KDF today")

    monkeypatch.setattr(engine.kdf, "hash_many", broken)
    try:
        with caplog.at_level(logging.DEBUG):
            for _ in range(3):
                issued = await engine.regenerate(ref_for(), CALLER)
                assert await pair_works(engine, issued.access_id, issued.otp)
                await asyncio.sleep(0)
            assert engine.reserve is not None
            await engine.reserve.fill()
            assert len(engine.reserve) == 0
        assert "could not be refilled" in caplog.text
        assert seen
        assert not any(each in caplog.text for each in seen)
    finally:
        await shut(engine)


def count_hashed(engine: CredentialEngine) -> list[int]:
    """How many OTPs each of the engine's reserve refill hand-offs hashed, from now on."""
    hashed: list[int] = []
    original = engine.kdf.hash_many

    async def counting(otps: Sequence[str], cost: int) -> list[str]:
        hashed.append(len(otps))
        return await original(otps, cost)

    engine.kdf.hash_many = counting  # type: ignore[method-assign]
    return hashed


async def test_nothing_is_refilled_after_close(store: Store, clock: Clock) -> None:
    engine = CredentialEngine(store, kdf_cost=TEST_KDF_COST, clock=clock, reserve=4)
    calls = count_hashed(engine)
    try:
        await engine.regenerate(ref_for(), CALLER)
        await engine.close()
        before = len(calls)
        issued = await engine.regenerate(ref_for(), CALLER)  # the old path
        assert engine.reserve is not None
        await engine.reserve.fill()
        engine.reserve.give_back(HashedOtp("LATE", "x"))
        with pytest.raises(Refusal):
            await engine.regenerate(ref_for(studyId="0" * 32), CALLER)
        await asyncio.sleep(0.05)
        assert len(calls) == before
        assert len(engine.reserve) == 0
        assert await pair_works(engine, issued.access_id, issued.otp)
    finally:
        engine.kdf.close()


async def test_a_refused_regeneration_costs_no_hash(store: Store, clock: Clock) -> None:
    """A refused attempt's OTP comes back to a full reserve: no refill, no OTP hashed and thrown
    away (a refill that started when the OTP was taken used to do just that)."""
    engine = CredentialEngine(store, kdf_cost=TEST_KDF_COST, clock=clock, reserve=4)
    hashed = count_hashed(engine)
    try:
        assert engine.reserve is not None
        await engine.reserve.fill()
        before = sum(hashed)
        for _ in range(10):
            with pytest.raises(Refusal):
                await engine.regenerate(ref_for(inventoryId="DEMO-UNKNOWN"), CALLER)
            await engine.reserve.fill()
        assert sum(hashed) - before == 0, f"{sum(hashed) - before} OTPs hashed for 10 refusals"
    finally:
        await shut(engine)


async def test_the_lifespan_stops_a_refill_under_way(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Served: a regeneration starts a refill whose hashes are slow; the server stops meanwhile. No
    task left pending, no error logged, and no KDF thread still hashing for the reserve once the
    lifespan has ended."""
    import httpx

    from gateway.app import create_app
    from gateway.engine.registry import DEMO_REGISTRY, load_registry
    from tests.demo import ALL_TABLES, bearer, regenerate
    from tests.utils import run_server

    store = await Store.open(settings.store_url, schema=settings.database_schema, tables=ALL_TABLES)
    await tables.seed(store, load_registry(DEMO_REGISTRY))
    await store.close()
    slow = _SlowHashes(0.4)
    monkeypatch.setattr(otp, "_hash_each", slow)
    served = settings.replace(otp_reserve=8, kdf_workers=2)
    with caplog.at_level(logging.WARNING):
        async with run_server(create_app(served)) as url:
            headers = {"Authorization": bearer(served)}
            async with httpx.AsyncClient(base_url=url, timeout=10, headers=headers) as client:
                got = await regenerate(client)
                assert got["__typename"] == "BootstrapCredentials"
            await asyncio.sleep(0.05)
            assert slow.running >= 1  # the refill is hashing
        others = {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}
        still_hashing = slow.running
    while slow.running:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert not [task for task in others if "hash" in repr(task) or "refill" in repr(task)], others
    assert still_hashing == 0, "the lifespan ended while the reserve's refill still hashed on a KDF thread"


async def _concurrent_answers(store: Store, clock: Clock, size: int) -> list[str]:
    engine = CredentialEngine(store, kdf_cost=TEST_KDF_COST, clock=clock, reserve=size)
    svc = service(store, engine, clock, caller=7)
    principal = Principal(f"who-{size}", "app", {"*": {"*": frozenset({"DeviceActionsPost"})}})
    answers: list[Any] = []

    async def attempt(index: int) -> None:
        inventory = READY[index % 2] if index % 3 else "DEMO-UNKNOWN"
        try:
            await svc.regenerate(request_for(inventory), Caller(f"{size}-{index}", principal=principal))
            answers.append("ok" if inventory in READY else "WRONG")
        except RateLimited as limited:
            answers.append(("limited", limited.retry_after_seconds))
        except Refusal as refusal:
            right = refusal.code is ErrorCode.INVALID_DEVICE and inventory not in READY
            answers.append("ok" if right else "WRONG")

    try:
        async with anyio.create_task_group() as tasks:
            for index in range(30):
                tasks.start_soon(attempt, index)
    finally:
        await shut(engine)
    return sorted(map(str, answers))


async def test_concurrent_rate_limits_answer_the_same_with_and_without_the_reserve(store: Store, clock: Clock) -> None:
    without = await _concurrent_answers(store, clock, 0)
    with_reserve = await _concurrent_answers(store, clock, 64)
    assert without == with_reserve
    assert without.count(str(("limited", 900))) == 23


async def test_no_otp_in_a_repr_or_a_str(store: Store, clock: Clock) -> None:
    engine = CredentialEngine(store, kdf_cost=TEST_KDF_COST, clock=clock, reserve=4)
    try:
        assert engine.reserve is not None
        await engine.reserve.fill()
        ready = list(engine.reserve._ready)
        issued = await engine.regenerate(ref_for(), CALLER)
        texts = [repr(engine.reserve), repr(engine.reserve._ready), repr(engine), repr(issued), str(issued)]
        texts += [f"{each}" for each in ready] + [f"{each!r}" for each in ready] + [str(ready)]
        texts += [repr(task) for task in asyncio.all_tasks()]
        blob = "\n".join(texts)
        assert not [each.otp for each in ready if each.otp in blob]
        assert issued.otp not in blob
    finally:
        await shut(engine)
