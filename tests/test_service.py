"""Rights, rate limits and the audit trail around any backend, over SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from sqlalchemy import delete, func, select, update

from gateway.audit import AuditTrail, Verdict, audit_events
from gateway.domain import (
    Attempt,
    Caller,
    Credentials,
    DeviceRef,
    ErrorCode,
    Principal,
    RateLimited,
    Readiness,
    Refusal,
    UnrecognizedUpstream,
)
from gateway.engine.engine import CredentialEngine
from gateway.rate_limits import Limit, RateLimiter, rate_counters
from gateway.regeneration import DeviceRequest, Policy, RegenerationService
from gateway.settings import Settings
from gateway.store import Store, UnitOfWork
from tests.demo import READY_DEVICE, STUDY, SUBJECT, TEST_AUDIT_KEY, TEST_KDF_COST, Clock

pytestmark = pytest.mark.anyio

EVERYTHING = Principal("site-user", "site-app", {"*": {"*": frozenset({"DeviceActionsPost"})}})


class CountingBackend:
    """The real engine, with a count of the calls that reach it."""

    def __init__(self, engine: CredentialEngine) -> None:
        self.engine = engine
        self.name = engine.name
        self.calls = 0

    async def readiness(self) -> Readiness:

        return Readiness(True)

    async def regenerate(self, ref: DeviceRef, caller: Caller, attempt: Attempt) -> Credentials:
        self.calls += 1
        return await self.engine.regenerate(ref, caller, attempt)


def request(**overrides: str) -> DeviceRequest:
    values = {
        "study_id": STUDY,
        "mode": "active",
        "subject_id": SUBJECT,
        "inventory_id": READY_DEVICE,
        "m_subject_id": "MSUBJECT-001",
    }
    values.update(overrides)
    return DeviceRequest(**values)


def caller(principal: Principal | None = EVERYTHING, request_id: str = "req") -> Caller:
    return Caller(request_id=request_id, principal=principal)


def service(
    store: Store, engine: CredentialEngine, clock: Clock, *, device: int = 100, per_caller: int = 100
) -> tuple[RegenerationService, CountingBackend]:
    backend = CountingBackend(engine)
    policy = Policy(
        require_principal=True,
        device_limit=Limit("device", device, timedelta(minutes=15)),
        caller_limit=Limit("caller", per_caller, timedelta(minutes=15)),
    )
    return RegenerationService(
        backend, AuditTrail(store, TEST_AUDIT_KEY), RateLimiter(store, clock), policy, clock
    ), backend


async def outcomes(store: Store) -> list[str]:
    return [record.outcome for record in await AuditTrail(store, TEST_AUDIT_KEY).records()]


async def refusal(svc: RegenerationService, req: DeviceRequest, who: Caller) -> Refusal:
    with pytest.raises(Refusal) as caught:
        await svc.regenerate(req, who)
    return caught.value


@pytest.mark.parametrize(
    "rights",
    [
        pytest.param({"0" * 32: {"active": frozenset({"DeviceActionsPost"})}}, id="another-study"),
        pytest.param({STUDY: {"test": frozenset({"DeviceActionsPost"})}}, id="another-mode"),
        pytest.param({STUDY: {"active": frozenset({"SubjectsGet"})}}, id="another-right"),
        pytest.param({}, id="no-rights"),
    ],
)
async def test_without_the_right_nothing_happens_but_one_denied_row(
    store: Store, engine: CredentialEngine, clock: Clock, rights: dict[str, dict[str, frozenset[str]]]
) -> None:
    svc, backend = service(store, engine, clock)
    denied = await refusal(svc, request(), caller(Principal("someone", None, rights)))
    assert denied.code is ErrorCode.PERMISSION_DENIED
    assert backend.calls == 0
    assert await outcomes(store) == ["PERMISSION_DENIED"]


async def test_no_principal_is_denied_unless_auth_is_off(store: Store, engine: CredentialEngine, clock: Clock) -> None:
    svc, backend = service(store, engine, clock)
    assert (await refusal(svc, request(), caller(None))).code is ErrorCode.PERMISSION_DENIED
    auth_off = Policy.from_settings(Settings().rate_limits, require_principal=False)
    open_policy = RegenerationService(backend, svc.audit, svc.limiter, auth_off, clock)
    await open_policy.regenerate(request(), caller(None))
    assert backend.calls == 1


@pytest.mark.parametrize(
    "rights",
    [
        pytest.param({STUDY: {"active": frozenset({"DeviceActionsPost"})}}, id="exact"),
        pytest.param({STUDY: {"*": frozenset({"DeviceActionsPost"})}}, id="any-mode"),
        pytest.param({"*": {"active": frozenset({"DeviceActionsPost"})}}, id="any-study"),
    ],
)
async def test_the_right_for_this_study_and_mode_is_enough(
    store: Store, engine: CredentialEngine, clock: Clock, rights: dict[str, dict[str, frozenset[str]]]
) -> None:
    svc, _ = service(store, engine, clock)
    await svc.regenerate(request(study_id=STUDY.lower()), caller(Principal("someone", None, rights)))
    assert await outcomes(store) == ["SUCCESS"]


async def test_device_rate_limit(
    store: Store, engine: CredentialEngine, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc, _ = service(store, engine, clock, device=2)
    await svc.regenerate(request(), caller())
    clock.advance(timedelta(minutes=5))
    await svc.regenerate(request(), caller())
    # Refused in its unit of work, counting nothing (the caller's budget is not spent on it), and
    # before any KDF hash (the engine screens the attempt, `attempt.screen`, before hashing).
    await refused_over_limit(svc, request(), store, engine, monkeypatch, retry_after=10 * 60)
    assert await outcomes(store) == ["SUCCESS", "SUCCESS", "RATE_LIMITED"]
    # Another device of the same caller is not held back; the window's end frees this one.
    await svc.regenerate(request(inventory_id="DEMO-CLOUD-READY"), caller())
    clock.advance(timedelta(minutes=10))
    await svc.regenerate(request(), caller())
    assert (await outcomes(store))[-2:] == ["SUCCESS", "SUCCESS"]


async def refused_over_limit(
    svc: RegenerationService,
    req: DeviceRequest,
    store: Store,
    engine: CredentialEngine,
    monkeypatch: pytest.MonkeyPatch,
    *,
    retry_after: int,
) -> None:
    """`req` is answered RATE_LIMITED with `retry_after`, counting nothing and hashing nothing."""
    counted = await counters(store)
    hashed: list[str] = []
    with monkeypatch.context() as patched:
        patched.setattr(engine.kdf, "hash", lambda otp, cost: hashed.append(otp))
        limited = await refusal(svc, req, caller())
    assert limited.code is ErrorCode.RATE_LIMITED
    assert isinstance(limited, RateLimited)
    assert limited.retry_after_seconds == retry_after
    assert await counters(store) == counted
    assert not hashed


async def counters(store: Store) -> list[tuple[str, int]]:
    """Every rate-limit counter's key and count."""
    async with store.engine.connect() as conn:
        rows = await conn.execute(select(rate_counters.c.key, rate_counters.c.count).order_by(rate_counters.c.key))
        return [(key, count) for key, count in rows]


async def test_caller_rate_limit(store: Store, engine: CredentialEngine, clock: Clock) -> None:
    svc, _ = service(store, engine, clock, per_caller=2)
    await svc.regenerate(request(), caller())
    await svc.regenerate(request(inventory_id="DEMO-CLOUD-READY"), caller())
    assert (await refusal(svc, request(), caller())).code is ErrorCode.RATE_LIMITED
    other = Principal("another-user", None, EVERYTHING.rights)
    await svc.regenerate(request(), caller(other))


async def test_the_check_before_the_backend_answers_what_the_next_count_would(store: Store, clock: Clock) -> None:
    """`peek` (one read, counting nothing) against `hit` (the count in the unit of work): two
    limits with windows of their own, each window's last moment, a limit switched off."""
    limiter = RateLimiter(store, clock)
    device, per_caller = Limit("device", 2, timedelta(minutes=15)), Limit("caller", 3, timedelta(minutes=5))
    hits = ((device, "a-device"), (per_caller, "a-caller"))

    async def peek(checked: tuple[tuple[Limit, str], ...] = hits) -> int | None:
        return await store.read(lambda conn: limiter.peek(conn, checked))

    async def count() -> list[int | None]:
        def unit(work: UnitOfWork) -> list[int | None]:
            verdicts = [limiter.hit(work.connection, limit, key) for limit, key in hits]
            return [None if exceeded is None else exceeded.retry_after for exceeded in verdicts]

        return await store.submit(unit)

    assert await peek() is None
    assert await count() == [None, None]
    assert await peek() is None
    clock.advance(timedelta(minutes=1))
    assert await count() == [None, None]  # the device's window is full: its next attempt would wait 14 minutes
    assert await peek() == 14 * 60
    assert await peek(((per_caller, "a-caller"),)) is None
    assert await peek(((Limit("device", 0, device.window), "a-device"), (per_caller, "a-caller"))) is None  # off
    clock.advance(timedelta(minutes=1))
    assert await count() == [13 * 60, None]  # counted anyway (the unit's own check): the caller's third
    assert await peek() == 13 * 60
    assert await peek(((per_caller, "a-caller"),)) == 3 * 60
    clock.advance(timedelta(minutes=3))  # the caller's window's last moment: ended, for both
    assert await peek(((per_caller, "a-caller"),)) is None
    assert await peek() == 10 * 60
    clock.advance(timedelta(minutes=10))
    assert await peek() is None
    assert await count() == [None, None]


async def test_limits_hold_across_processes_sharing_the_store(
    store: Store, engine: CredentialEngine, clock: Clock
) -> None:
    """Two services over two separate connections pools to one database count into one limit."""
    url = store.engine.url.render_as_string(hide_password=False)
    schema_map = store.engine.get_execution_options().get("schema_translate_map") or {}
    second_store = await Store.open(url, schema=schema_map.get(None) or "", create=False)
    try:
        first, _ = service(store, engine, clock, device=3)
        second, _ = service(second_store, CredentialEngine(second_store, kdf_cost=4, clock=clock), clock, device=3)
        await first.regenerate(request(), caller())
        await second.regenerate(request(), caller())
        await first.regenerate(request(), caller())
        assert (await refusal(second, request(), caller())).code is ErrorCode.RATE_LIMITED
    finally:
        await second_store.close()


async def test_one_audit_row_per_attempt_whatever_the_outcome(
    store: Store, engine: CredentialEngine, clock: Clock
) -> None:
    svc, _ = service(store, engine, clock, device=3)
    attempts: list[tuple[DeviceRequest, Principal | None]] = [
        (request(), EVERYTHING),
        (request(inventory_id="DEMO-IN-STOCK"), EVERYTHING),
        (request(mode="test"), EVERYTHING),
        (request(study_id="not-a-guid"), EVERYTHING),
        (request(inventory_id="bad\x00id"), EVERYTHING),
        (request(), Principal("nobody", None, {})),
        (request(), EVERYTHING),
        (request(), EVERYTHING),
        (request(), EVERYTHING),
    ]
    for index, (req, principal) in enumerate(attempts):
        with contextlib.suppress(Refusal):
            await svc.regenerate(req, caller(principal, request_id=f"req-{index}"))
    assert await outcomes(store) == [
        "SUCCESS",
        "DEVICE_NOT_DISPENSED",
        "MHEALTH_SETTINGS_NOT_FOUND",
        "INVALID_INPUT",
        "INVALID_INPUT",
        "PERMISSION_DENIED",
        "SUCCESS",
        "SUCCESS",
        "RATE_LIMITED",
    ]
    records = await AuditTrail(store, TEST_AUDIT_KEY).records()
    assert [r.request_id for r in records] == [f"req-{i}" for i in range(len(attempts))]
    assert records[0].caller == "site-user"
    assert records[0].client_id == "site-app"
    assert (records[0].study_id, records[0].mode, records[0].subject_id) == (STUDY, "active", SUBJECT)
    assert records[4].inventory_id == "bad\N{REPLACEMENT CHARACTER}id"
    assert all(r.at.tzinfo is not None for r in records)
    assert await AuditTrail(store, TEST_AUDIT_KEY).verify() == Verdict(len(attempts))


async def test_an_unrecognised_upstream_error_is_audited(store: Store, clock: Clock) -> None:
    class Unrecognised:
        name = "upstream"

        async def readiness(self) -> Readiness:

            return Readiness(True)

        async def regenerate(self, ref: DeviceRef, caller: Caller, attempt: Attempt) -> Credentials:
            raise UnrecognizedUpstream(upstream_status=418, upstream_code="TEAPOT")

    policy = Policy.from_settings(Settings().rate_limits)
    svc = RegenerationService(
        Unrecognised(), AuditTrail(store, TEST_AUDIT_KEY), RateLimiter(store, clock), policy, clock
    )
    await refusal(svc, request(), caller())
    assert await outcomes(store) == ["UNRECOGNIZED_UPSTREAM_ERROR"]


async def test_tampering_is_found(store: Store, engine: CredentialEngine, clock: Clock) -> None:
    svc, _ = service(store, engine, clock)
    for _ in range(4):
        await svc.regenerate(request(), caller())
    trail = AuditTrail(store, TEST_AUDIT_KEY)
    assert await trail.verify() == Verdict(4)
    async with store.transaction() as conn:
        await conn.execute(update(audit_events).where(audit_events.c.seq == 2).values(caller="mallory"))
    assert (await trail.verify()).broken == (2, "its contents do not match its hash")
    async with store.transaction() as conn:
        await conn.execute(update(audit_events).where(audit_events.c.seq == 2).values(caller="site-user"))
        await conn.execute(delete(audit_events).where(audit_events.c.seq == 4))
    assert (await trail.verify()).broken_at == 4
    async with store.transaction() as conn:
        await conn.execute(delete(audit_events).where(audit_events.c.seq == 1))
    assert (await trail.verify()).broken == (2, "row 1 is missing (found 2)")
    async with store.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(audit_events))).scalar_one() == 2


class UpstreamLike:
    """An upstream-like backend: its unit of work (`begin`) commits before its call; it takes the
    inventory ID as sent, so `demo-ready-01` is a spelling of it."""

    name = "upstream"

    async def readiness(self) -> Readiness:
        return Readiness(True)

    async def regenerate(self, ref: DeviceRef, caller: Caller, attempt: Attempt) -> Credentials:
        await attempt.begin()
        return Credentials(access_id="ABC234", otp="ABCD2345", device_id="F" * 32, expires_at=None)


async def test_an_attempt_over_its_callers_limit_spends_no_devices_budget(store: Store, clock: Clock) -> None:
    """The unit of work refuses an attempt already over a limit before it counts anything: a caller
    over its own limit cannot use up the budget of the devices it asks for."""
    window = timedelta(minutes=15)
    policy = Policy(
        require_principal=True, device_limit=Limit("device", 100, window), caller_limit=Limit("caller", 2, window)
    )
    svc = RegenerationService(
        UpstreamLike(), AuditTrail(store, TEST_AUDIT_KEY), RateLimiter(store, clock), policy, clock
    )
    await svc.regenerate(request(), caller())
    await svc.regenerate(request(inventory_id="DEMO-CLOUD-READY"), caller())
    counted = await counters(store)
    for _ in range(3):
        limited = await refusal(svc, request(inventory_id="DEMO-UNREGISTERED"), caller())
        assert limited.code is ErrorCode.RATE_LIMITED
    assert await counters(store) == counted  # no counter for the third device, the caller's still at 2
    assert await outcomes(store) == ["PENDING", "SUCCESS", "PENDING", "SUCCESS", *["RATE_LIMITED"] * 3]


async def test_spelling_variants_of_one_inventory_id_share_one_device_budget(store: Store, clock: Clock) -> None:
    policy = Policy(
        require_principal=True,
        device_limit=Limit("device", 2, timedelta(minutes=15)),
        caller_limit=Limit("caller", 100, timedelta(minutes=15)),
    )
    svc = RegenerationService(
        UpstreamLike(), AuditTrail(store, TEST_AUDIT_KEY), RateLimiter(store, clock), policy, clock
    )
    await svc.regenerate(request(inventory_id="DEMO-READY-01"), caller())
    await svc.regenerate(request(inventory_id="demo-ready-01"), caller())
    limited = await refusal(svc, request(inventory_id="Demo-Ready-01"), caller())
    assert limited.code is ErrorCode.RATE_LIMITED


async def test_two_long_subjects_sharing_a_prefix_keep_their_own_budgets(
    store: Store, engine: CredentialEngine, clock: Clock
) -> None:
    svc, _ = service(store, engine, clock, per_caller=1)
    first, second = "x" * 248 + "-alice", "x" * 248 + "-bob"
    await svc.regenerate(request(), caller(Principal(first, None, EVERYTHING.rights)))
    await svc.regenerate(request(inventory_id="DEMO-CLOUD-READY"), caller(Principal(second, None, EVERYTHING.rights)))
    limited = await refusal(svc, request(), caller(Principal(first, None, EVERYTHING.rights)))
    assert limited.code is ErrorCode.RATE_LIMITED


@pytest.mark.parametrize("reserve", [0, 4], ids=["no-reserve", "reserve-empty"])
@pytest.mark.parametrize("study", [STUDY, "0" * 32], ids=["ready", "unknown-study"])
async def test_with_no_otp_ready_an_attempt_over_a_limit_is_refused_first_whatever_its_device(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch, reserve: int, study: str
) -> None:
    """The engine with no OTP ready screens the attempt first, and a refusal commits at once; an
    attempt over a limit is still answered RATE_LIMITED (not the device's refusal), counting
    nothing and hashing nothing, whether its device would have been refused or not."""
    engine = CredentialEngine(store, kdf_cost=TEST_KDF_COST, clock=clock, reserve=reserve)
    try:
        svc, _ = service(store, engine, clock, per_caller=2)
        await svc.regenerate(request(), caller())
        await svc.regenerate(request(inventory_id="DEMO-CLOUD-READY"), caller())
        if engine.reserve is not None:
            await engine.reserve.close()  # none ready from here on
        await refused_over_limit(svc, request(study_id=study), store, engine, monkeypatch, retry_after=15 * 60)
        assert await outcomes(store) == ["SUCCESS", "SUCCESS", "RATE_LIMITED"]
    finally:
        await engine.close()


async def test_with_no_otp_ready_the_screen_writes_nothing_and_each_attempt_counts_once(
    store: Store, engine: CredentialEngine, clock: Clock
) -> None:
    """The engine without a ready OTP screens the attempt in a unit of its own before hashing: a
    refusal is counted and recorded there, once; an attempt that passes is counted and recorded
    only by its own unit, with the new pair."""
    assert engine.reserve is None
    svc, _ = service(store, engine, clock)
    await svc.regenerate(request(), caller())
    await svc.regenerate(request(), caller())
    assert (await refusal(svc, request(study_id="0" * 32), caller())).code is ErrorCode.STUDY_NOT_FOUND
    assert await outcomes(store) == ["SUCCESS", "SUCCESS", "STUDY_NOT_FOUND"]
    assert sorted(count for _, count in await counters(store)) == [1, 2, 3]  # two devices' and the caller's
