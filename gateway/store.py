"""The database: engine, pool, dialect tuning, metadata, and group commit of units of work.

One code path for SQLite (aiosqlite) and PostgreSQL (asyncpg), through SQLAlchemy Core. Each
table is declared beside its owner on the shared `metadata` (the audit trail's in `audit.py`,
the rate limiter's in `rate_limits.py`, the local engine's in `engine/tables.py`); the store
creates only the tables it is given, so upstream mode has no engine tables.

**Units of work and group commit.** Everything one attempt writes is a *unit*: an async function
of a `UnitOfWork` (its connection, and `defer` for rows a participant such as the audit trail
writes at the end of the batch). `Store.submit(unit)` queues it; one writer task per store takes
every unit waiting, runs them one after another in **one transaction**, lets the participants
flush what the units deferred, and commits. Each caller is answered only after that commit
(durable: SQLite runs `synchronous=FULL`, PostgreSQL's default `synchronous_commit=on`), so
concurrent attempts share one sync instead of paying one each. A unit that raises is rolled back
alone: the transaction is rolled back and the other units run again in a new one (units read
before they write, so running one again is safe); it never reaches the commit.

Participants (`Participant`) are told when each batch begins, before any unit runs: the audit
trail locks its head row there, which lines batches up across processes (every batch takes that
lock first, so batches of different replicas never wait on each other's device rows in a cycle).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import DateTime, MetaData, Table, TypeDecorator, event, text
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

log = logging.getLogger(__name__)

T = TypeVar("T")

metadata = MetaData()
"""Every table of the gateway, each declared by the module that owns it."""

MAX_BATCH = 128
"""Units committed together at most: bounds a batch's transaction time."""
READERS = 4
"""SQLite: connections for reads beside the writer's one."""


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass
class UnitOfWork:
    """One unit's share of a batch transaction."""

    connection: AsyncConnection
    deferred: list[tuple[Participant, object]] = field(default_factory=list)

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self.connection.dialect.name

    def defer(self, participant: Participant, item: object) -> None:
        """Hand `item` to `participant.flush` at the end of the batch (dropped if this unit fails)."""
        self.deferred.append((participant, item))


Unit = Callable[[UnitOfWork], Awaitable[T]]


class Participant(Protocol):
    """A writer of rows on behalf of many units, once per batch (the audit trail)."""

    async def begin_batch(self, connection: AsyncConnection) -> None:
        """Called first in every batch transaction, before any unit runs."""

    async def flush(self, connection: AsyncConnection, items: Sequence[object]) -> None:
        """Write what the batch's units deferred to this participant, in their order."""


@dataclass
class _Pending:
    unit: Unit[Any]
    answer: asyncio.Future[Any]


class Store:
    """An open store: an async engine with its pool and its group-commit writer.

    Open with `Store.open`, close with `close` (the app's lifespan does both).
    """

    def __init__(self, engine: AsyncEngine, *, reader: AsyncEngine | None = None, max_batch: int = MAX_BATCH) -> None:
        self.engine = engine
        self.reader = reader or engine
        """Where reads go: on SQLite a pool of its own in autocommit, so that reads (each statement
        a snapshot, in WAL mode) neither wait for the writer nor hold it up."""
        self.max_batch = max_batch
        self.participants: list[Participant] = []
        self._queue: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self.engine.dialect.name

    @classmethod
    async def open(cls, url: str, *, schema: str = "", tables: Sequence[Table] = (), create: bool = True) -> Store:
        """Connect (creating a SQLite file's folder) and, unless told not to, create the missing `tables`."""
        parsed = make_url(url)
        options: dict[str, Any] = {"pool_pre_ping": True}
        sqlite = parsed.get_backend_name() == "sqlite"
        if sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # Wait for the write lock (up to 30 s) rather than failing at once under contention.
            options["connect_args"] = {"timeout": 30}
            # SQLite has one writer at a time, and every transaction here begins IMMEDIATE: a single
            # connection per process queues them fairly in the pool, where several connections would
            # poll SQLite's busy handler (sleeps of up to 100 ms) and stretch the latency tail.
            options.update(pool_size=1, max_overflow=0, pool_timeout=30)
        if schema:
            options["execution_options"] = {"schema_translate_map": {None: schema}}
        engine = create_async_engine(parsed, **options)
        reader = None
        if sqlite:
            _configure_sqlite(engine, begin="BEGIN IMMEDIATE")
            # Reads are single statements: each its own implicit transaction, no BEGIN or ROLLBACK.
            reader = create_async_engine(parsed, **{**options, "pool_size": READERS, "isolation_level": "AUTOCOMMIT"})
            _configure_sqlite(reader, begin=None)
        store = cls(engine, reader=reader)
        if create and tables:
            try:
                await store.create_tables(tables)
            except BaseException:
                await store.dispose()
                raise
        return store

    async def create_tables(self, tables: Sequence[Table]) -> None:
        """Create those of `tables` that do not exist yet (idempotent)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(lambda sync: metadata.create_all(sync, tables=list(tables)))

    def join(self, participant: Participant) -> None:
        """Have `participant` told when every batch begins (one of each kind is enough)."""
        if not any(type(joined) is type(participant) for joined in self.participants):
            self.participants.append(participant)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reading; on SQLite each statement sees its own snapshot and never
        holds the write lock (a read of several statements that must agree uses `transaction`)."""
        async with self.reader.connect() as conn:
            yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One transaction outside group commit (seeding, tools): committed when the block ends."""
        async with self.engine.begin() as conn:
            yield conn

    async def submit(self, unit: Unit[T]) -> T:
        """Run `unit` in the next batch; return its result once the batch is committed.

        Raises what the unit raised (nothing of it was committed), or the commit's error (nothing
        of the batch was committed).
        """
        if self._closed:
            raise RuntimeError("the store is closed")
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(unit, answer))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="store-group-commit")
        return await answer

    async def _write(self) -> None:
        batch: list[_Pending] = []
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                # A caller that gave up before its turn (client gone) is not acted for.
                await self._commit([pending for pending in batch if not pending.answer.done()])
        except BaseException:
            # Cancelled (the loop is closing): nobody waits for an answer that will not come.
            for pending in (*batch, *self._queue):
                _answer(pending.answer, error=RuntimeError("the store's writer stopped"))
            self._queue = []
            raise

    async def _commit(self, batch: list[_Pending]) -> None:
        while batch:
            try:
                results, failed = await self._run_batch(batch)
            except Exception as error:  # the begin, a participant or the commit failed: nothing is stored
                for pending in batch:
                    _answer(pending.answer, error=error)
                return
            if failed is None:
                for pending, result in zip(batch, results, strict=True):
                    _answer(pending.answer, result=result)
                return
            # One unit failed: it alone is answered with its error; the others run again.
            index, unit_error = failed
            _answer(batch[index].answer, error=unit_error)
            batch = batch[:index] + batch[index + 1 :]

    async def _run_batch(self, batch: list[_Pending]) -> tuple[list[Any], tuple[int, BaseException] | None]:
        results: list[Any] = []
        async with self.engine.connect() as conn, conn.begin() as transaction:
            for participant in self.participants:
                await participant.begin_batch(conn)
            works: list[UnitOfWork] = []
            for index, pending in enumerate(batch):
                work = UnitOfWork(conn)
                try:
                    results.append(await pending.unit(work))
                except Exception as error:
                    await transaction.rollback()
                    return results, (index, error)
                works.append(work)
            deferred: dict[int, tuple[Participant, list[object]]] = {}
            for work in works:
                for owner, item in work.deferred:
                    deferred.setdefault(id(owner), (owner, []))[1].append(item)
            for owner, items in deferred.values():
                await owner.flush(conn, items)
        return results, None

    async def ping(self) -> bool:
        """True when the database answers a trivial query within 5 s."""
        try:
            async with asyncio.timeout(5), self.read() as conn:
                await conn.execute(text("SELECT 1"))
        except (SQLAlchemyError, OSError, TimeoutError):
            log.warning("the store did not answer", exc_info=True)
            return False
        return True

    async def close(self) -> None:
        """Let queued units finish, then close the pool."""
        self._closed = True
        if self._writer is not None:
            with suppress(Exception):
                await self._writer
        await self.dispose()

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.reader is not self.engine:
            await self.reader.dispose()


def _answer(future: asyncio.Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _configure_sqlite(engine: AsyncEngine, *, begin: str | None) -> None:
    """Let SQLAlchemy, not the driver, begin transactions, with `begin` (None: reads in autocommit).

    The writer begins IMMEDIATE: pysqlite's own BEGIN is deferred, and two transactions that read
    and then write would deadlock and one would fail with "database is locked"; BEGIN IMMEDIATE
    takes the write lock first and the other (another process's writer) waits its turn (up to the
    connect timeout). Readers run each statement in its own implicit transaction: they never take
    the write lock. WAL lets readers run beside a writer;
    `synchronous=FULL` makes every commit durable on power loss (WAL's NORMAL may lose the last
    commits), and group commit keeps its cost at one sync per batch.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    if begin is not None:

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql(begin)
