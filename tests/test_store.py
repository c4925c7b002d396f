"""The store's hot path: a prepared statement reads and writes what Core does, on SQLite and
PostgreSQL; the connections SQLite's store holds (the event loop's reader, the writer's) keep no
snapshot open and outlast a busy database."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, String, bindparam, cast, event, func, insert, select
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

from gateway import store as store_module
from gateway.audit import AuditEvent, AuditTrail, audit_events
from gateway.domain import Caller, StudyMode
from gateway.engine import tables
from gateway.engine.engine import CredentialEngine
from gateway.engine.tables import credentials, devices
from gateway.rate_limits import rate_counters
from gateway.store import PreparedStatement, Store, UnitOfWork
from tests.demo import ALL_TABLES, READY_REF, TEST_AUDIT_KEY, ref_for

pytestmark = pytest.mark.anyio


@contextmanager
def core_statements(conn: Connection) -> Iterator[list[str]]:
    """The statements Core executes on `conn` meanwhile."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(conn, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(conn, "before_cursor_execute", note)


async def test_a_prepared_statement_reads_what_core_reads(store: Store, engine: CredentialEngine) -> None:
    await engine.regenerate(READY_REF, Caller("req-1"))  # a credential row: datetimes, NULLs, an enum, an integer
    facts = {"study_id": READY_REF.study_id, "mode": READY_REF.mode, "inventory_id": READY_REF.inventory_id}
    queries: list[tuple[PreparedStatement, dict[str, Any]]] = [
        (PreparedStatement(select(credentials)), {}),
        (PreparedStatement(select(devices).where(devices.c.mode == bindparam("mode"))), {"mode": StudyMode.ACTIVE}),
        (tables._FACTS, {**facts, "subject_id": READY_REF.subject_id}),
        (tables._FACTS, {**facts, "study_id": "0" * 32, "subject_id": READY_REF.subject_id}),
    ]

    def both(conn: Connection) -> list[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[str]]]:
        answers = []
        for prepared, params in queries:
            with core_statements(conn) as executed:
                rows = prepared.rows(conn, params)
            answers.append((rows, [tuple(row) for row in conn.execute(prepared.statement, params)], executed))
        return answers

    answers = await store.read(both)
    assert [len(rows) > 0 for rows, _, _ in answers] == [True, True, True, False]
    for prepared_rows, core_rows, executed in answers:
        assert prepared_rows == core_rows
        assert [list(map(type, row)) for row in prepared_rows] == [list(map(type, row)) for row in core_rows]
        # SQLite: on the driver, past Core; PostgreSQL: through Core.
        assert len(executed) == (0 if store.dialect == "sqlite" else 1)
    [pair] = answers[0][0]
    issued_at, used_at = pair[credentials.c.keys().index("issued_at")], pair[credentials.c.keys().index("used_at")]
    assert issued_at.tzinfo == UTC
    assert used_at is None
    assert pair[credentials.c.keys().index("mode")] is StudyMode.ACTIVE


async def test_a_prepared_statement_writes_what_core_writes(store: Store) -> None:
    at = datetime(2026, 1, 1, 13, 30, 15, 123456, tzinfo=timezone(timedelta(hours=1)))  # stored as 12:30:15 UTC
    prepared = PreparedStatement(insert(rate_counters))

    def write(work: UnitOfWork) -> None:
        prepared.execute_many(work.connection, [{"key": "prepared", "window_start": at, "count": 1}])
        work.connection.execute(insert(rate_counters), [{"key": "core", "window_start": at, "count": 1}])

    await store.submit(write)
    stored = select(rate_counters.c.key, cast(rate_counters.c.window_start, String), rate_counters.c.window_start)
    rows = await store.read(lambda conn: conn.execute(stored.order_by(rate_counters.c.key)).all())
    assert [tuple(row[1:]) for row in rows] == [(rows[0][1], at)] * 2  # the same text stored, the same instant read


async def test_a_prepared_statement_raises_what_core_raises(store: Store) -> None:
    prepared = PreparedStatement(insert(rate_counters))
    row = {"key": "twice", "window_start": datetime.now(UTC), "count": 1}

    def twice(work: UnitOfWork) -> None:
        prepared.execute_many(work.connection, [row, row])

    with pytest.raises(IntegrityError) as raised:
        await store.submit(twice)
    assert "[SQL parameters hidden due to hide_parameters=True]" in str(raised.value)
    await store.submit(lambda work: prepared.execute(work.connection, row))  # nothing of it was kept; the store goes on
    assert await store.read(lambda conn: conn.execute(select(func.count()).select_from(rate_counters)).scalar()) == 1


async def sqlite_store(tmp_path: Path) -> Store:
    return await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'store.sqlite3'}", tables=ALL_TABLES)


async def test_a_prepared_statement_takes_fixed_sql_and_every_value(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path)
    try:
        expanding = PreparedStatement(
            select(rate_counters).where(rate_counters.c.key.in_(bindparam("keys", expanding=True)))
        )
        with pytest.raises(ArgumentError, match="no expanding"):
            await store.read(lambda conn: expanding.rows(conn, {"keys": ["a"]}))
        with pytest.raises(ArgumentError, match="a value is required for the parameter"):
            await store.read(lambda conn: tables._FACTS.rows(conn, {"mode": StudyMode.ACTIVE}))
    finally:
        await store.close()


def _event(outcome: str) -> AuditEvent:
    return AuditEvent(at=datetime.now(UTC), action="test", outcome=outcome, request_id="req")


async def test_the_held_reader_reads_every_commit_and_never_holds_a_checkpoint_back(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path)
    trail = AuditTrail(store, TEST_AUDIT_KEY)
    checkpointer = sqlite3.connect(tmp_path / "store.sqlite3", isolation_level=None)
    try:
        count = select(func.count()).select_from(audit_events)
        for rows in range(1, 4):
            await store.submit(lambda work: trail.append(work, _event("ROW")))
            assert (await trail.head()).seq == rows
            # The same connection on the loop, a prepared and a Core read: each sees the last commit.
            assert not (await store.read(lambda conn: tables.facts(conn, READY_REF))).study_mode_known
            assert await store.read(lambda conn: conn.execute(count).scalar()) == rows
        # Between reads the reader holds no snapshot: a checkpoint copies the whole WAL and truncates it.
        busy, _, _ = checkpointer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
        assert (tmp_path / "store.sqlite3-wal").stat().st_size == 0
        await store.submit(lambda work: trail.append(work, _event("AFTER")))
        assert await store.read(lambda conn: conn.execute(count).scalar()) == 4
        assert (await trail.verify()).rows == 4
    finally:
        checkpointer.close()
        await store.close()


async def test_a_held_reader_that_finds_the_database_busy_is_replaced(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path)
    assert store._sqlite is not None
    loop_thread = threading.current_thread()
    readers: list[Connection] = []  # kept alive: their ids stay distinct

    def on_execute(conn: Connection, *_: Any) -> None:
        if threading.current_thread() is not loop_thread:
            return  # the waiting reader, in a worker thread
        readers.append(conn)
        if len(readers) == 1:
            raise sqlite3.OperationalError("database is locked")

    event.listen(store._sqlite.reader, "before_cursor_execute", on_execute)
    try:
        assert await store.read(tables.is_empty)  # the loop's reader finds it busy: read again in a thread
        assert await store.read(tables.is_empty)
        assert await store.read(tables.is_empty)
        assert len(readers) == 3
        assert len({id(reader) for reader in readers}) == 2, "the busy reader was given back, a fresh one held"
    finally:
        event.remove(store._sqlite.reader, "before_cursor_execute", on_execute)
        await store.close()


async def test_a_batch_that_cannot_begin_fails_as_core_would_and_the_next_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_SECONDS", 0.2)
    store = await sqlite_store(tmp_path)
    trail = AuditTrail(store, TEST_AUDIT_KEY)
    holder = sqlite3.connect(tmp_path / "store.sqlite3", isolation_level=None)
    try:
        await store.submit(lambda work: trail.append(work, _event("FIRST")))
        holder.execute("BEGIN IMMEDIATE")  # another process's writer holds the write lock
        with pytest.raises(OperationalError, match="locked"):
            await store.submit(lambda work: trail.append(work, _event("LOCKED OUT")))
        holder.rollback()
        await store.submit(lambda work: trail.append(work, _event("SECOND")))
        assert [record.outcome for record in await trail.records()] == ["FIRST", "SECOND"]
    finally:
        holder.close()
        await store.close()


@pytest.mark.parametrize("inventory_id", ["DEMO-READY-01", "DEMO-NOT-THERE"])
async def test_the_rules_read_the_same_facts_on_the_loop_and_in_a_batch(
    store: Store, engine: CredentialEngine, inventory_id: str
) -> None:
    ref = ref_for(inventoryId=inventory_id)
    read = await store.read(lambda conn: tables.facts(conn, ref))
    assert read == await store.submit(lambda work: tables.facts(work.connection, ref, lock=True))
    assert (read.device is not None) is (inventory_id == "DEMO-READY-01")
