"""Group commit: concurrent attempts share commits, and nobody is answered before their own commit."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import event, func, inspect, select
from sqlalchemy.exc import OperationalError

from gateway.app import store_tables
from gateway.audit import AuditEvent, AuditTrail, Verdict, audit_events
from gateway.domain import Caller, Credentials, ErrorCode, Principal, Refusal, utc_now
from gateway.engine import tables
from gateway.engine.engine import CredentialEngine
from gateway.engine.tables import credentials
from gateway.rate_limits import Limit, RateLimiter
from gateway.regeneration import DeviceRequest, Policy, RegenerationService
from gateway.settings import Settings
from gateway.store import GATHER_TURNS, Store, UnitOfWork
from tests.demo import ALL_TABLES, READY_DEVICE, STUDY, SUBJECT, TEST_AUDIT_KEY, Clock, Database

pytestmark = pytest.mark.anyio


@pytest.fixture
def engine(engine_both_ways: CredentialEngine) -> CredentialEngine:
    """Every test here on both of the engine's paths (`hashing`, `reserved`: tests/conftest.py)."""
    return engine_both_ways


EVERYTHING = Principal("site-user", "site-app", {"*": {"*": frozenset({"DeviceActionsPost"})}})
UNKNOWN_STUDY = "0" * 32


def service(store: Store, engine: CredentialEngine, clock: Clock) -> RegenerationService:
    policy = Policy(
        require_principal=True,
        device_limit=Limit("device", 1000, timedelta(minutes=15)),
        caller_limit=Limit("caller", 1000, timedelta(minutes=15)),
    )
    return RegenerationService(engine, AuditTrail(store, TEST_AUDIT_KEY), RateLimiter(store, clock), policy, clock)


def request(index: int) -> DeviceRequest:
    """Half of them succeed (on two devices), half are refused (an unknown study)."""
    device = READY_DEVICE if index % 4 == 0 else "DEMO-CLOUD-READY"
    study = STUDY if index % 2 == 0 else UNKNOWN_STUDY
    return DeviceRequest(study, "active", SUBJECT, device, "MSUBJECT-001")


@contextmanager
def counting_commits(store: Store) -> Iterator[list[int]]:
    commits: list[int] = []

    def count(_connection: Any) -> None:
        commits.append(1)

    event.listen(store.write_engine, "commit", count)
    try:
        yield commits
    finally:
        event.remove(store.write_engine, "commit", count)


async def rows(store: Store, table: Any) -> int:
    async with store.engine.connect() as conn:
        count: int = (await conn.execute(select(func.count()).select_from(table))).scalar_one()
        return count


async def test_concurrent_attempts_share_commits(store: Store, engine: CredentialEngine, clock: Clock) -> None:
    svc = service(store, engine, clock)
    answers: list[Credentials | ErrorCode] = []

    async def attempt(index: int) -> None:
        try:
            answers.append(await svc.regenerate(request(index), Caller(f"req-{index}", principal=EVERYTHING)))
        except Refusal as refusal:
            answers.append(refusal.code)

    with counting_commits(store) as commits:
        async with anyio.create_task_group() as tasks:
            for index in range(50):
                tasks.start_soon(attempt, index)
    assert len(answers) == 50
    assert sum(isinstance(answer, Credentials) for answer in answers) == 25
    assert answers.count(ErrorCode.STUDY_NOT_FOUND) == 25
    assert 0 < len(commits) < 50, f"{len(commits)} commits for 50 attempts"
    assert await rows(store, audit_events) == 50
    assert await AuditTrail(store, TEST_AUDIT_KEY).verify() == Verdict(50)


async def test_a_unit_that_fails_is_rolled_back_alone(store: Store) -> None:
    trail = AuditTrail(store, TEST_AUDIT_KEY)

    def fails(work: UnitOfWork) -> None:
        trail.append(work, _event("FAILS"))
        raise RuntimeError("this unit's own error")

    def succeeds(work: UnitOfWork) -> str:
        trail.append(work, _event("SUCCEEDS"))
        return "done"

    results: list[object] = []

    async def run(unit: Any) -> None:
        try:
            results.append(await store.submit(unit))
        except RuntimeError as error:
            results.append(str(error))

    async with anyio.create_task_group() as tasks:
        for unit in (succeeds, fails, succeeds):
            tasks.start_soon(run, unit)
    assert sorted(map(str, results)) == ["done", "done", "this unit's own error"]
    assert [record.outcome for record in await trail.records()] == ["SUCCEEDS", "SUCCEEDS"]


async def test_no_caller_is_answered_before_its_commit(
    store: Store, engine: CredentialEngine, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    svc = service(store, engine, clock)

    def refuse_commit(_connection: Any) -> None:
        raise OperationalError("COMMIT", {}, Exception("disk I/O error"))

    answers: list[Credentials | ErrorCode] = []

    async def attempt(index: int) -> None:
        try:
            answers.append(await svc.regenerate(request(index * 2), Caller(f"req-{index}", principal=EVERYTHING)))
        except Refusal as refusal:
            answers.append(refusal.code)

    event.listen(store.write_engine, "commit", refuse_commit)
    try:
        with caplog.at_level(logging.ERROR):
            async with anyio.create_task_group() as tasks:
                for index in range(10):
                    tasks.start_soon(attempt, index)
    finally:
        event.remove(store.write_engine, "commit", refuse_commit)
    assert answers == [ErrorCode.INTERNAL_SERVER_ERROR] * 10
    assert await rows(store, credentials) == 0
    assert await rows(store, audit_events) == 0
    assert "AUDIT WRITE FAILED" in caplog.text


def _event(outcome: str) -> AuditEvent:
    return AuditEvent(at=utc_now(), action="test", outcome=outcome, request_id="req")


async def test_a_read_that_finds_sqlite_busy_waits_in_a_thread_not_on_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "busy.sqlite3"
    store = await Store.open(f"sqlite+aiosqlite:///{path}", tables=ALL_TABLES)
    try:
        await store.engine.dispose()  # an exclusive lock needs every other connection closed
        holder = sqlite3.connect(path, check_same_thread=False)
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")  # in WAL mode an exclusive lock keeps readers out too
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(tick)
            tasks.start_soon(anyio.to_thread.run_sync, _release_later, holder)
            assert await store.read(tables.is_empty)
            tasks.cancel_scope.cancel()
        assert ticks >= 10, "the event loop waited for the lock"
    finally:
        await store.close()


def _release_later(holder: sqlite3.Connection) -> None:
    time.sleep(0.3)
    holder.rollback()
    holder.close()


@pytest.mark.parametrize(("backend", "engine_tables"), [("local", True), ("upstream", False)])
async def test_upstream_mode_creates_no_engine_tables(database: Database, backend: str, engine_tables: bool) -> None:
    settings = Settings().replace(backend=backend, upstream_url="https://tenant.example")
    store = await Store.open(database.url, schema=database.schema, tables=store_tables(settings))
    try:
        names = set(await store.read(lambda conn: inspect(conn).get_table_names(schema=database.schema or None)))
    finally:
        await store.close()
    assert {"audit_events", "audit_head", "rate_counters"} <= names
    assert ("credentials" in names) is engine_tables
    assert ("devices" in names) is engine_tables


async def test_the_writers_gather_turns_act_for_no_caller_gone_and_close_waits_for_them(store: Store) -> None:
    """The writer lets the loop turn (`GATHER_TURNS`) before it takes a batch: a caller gone meanwhile
    is not acted for, one still waiting is answered, and `close` meanwhile lets the batch commit."""
    ran: list[str] = []

    def unit(name: str) -> Any:
        def run(work: UnitOfWork) -> str:
            ran.append(name)
            return name

        return run

    gone = asyncio.create_task(store.submit(unit("gone")))
    staying = asyncio.create_task(store.submit(unit("staying")))
    await asyncio.sleep(0)  # both queued; the writer is in its turns
    assert not ran
    gone.cancel()
    closing = asyncio.create_task(store.close())
    for _ in range(GATHER_TURNS):
        await asyncio.sleep(0)
    assert await asyncio.wait_for(staying, 10) == "staying"
    await asyncio.wait_for(closing, 10)
    assert gone.cancelled()
    assert ran == ["staying"]
