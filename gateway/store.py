"""The database: engines, pools, dialect tuning, metadata, and group commit of units of work.

One code path for SQLite and PostgreSQL, through SQLAlchemy Core. Each table is declared beside
its owner on the shared `metadata` (the audit trail's in `audit.py`, the rate limiter's in
`rate_limits.py`, the local engine's in `engine/tables.py`); the store creates only the tables it
is given, so upstream mode has no engine tables.

**Units of work and group commit.** Everything one attempt writes is a *unit*: a plain function
of a `UnitOfWork` (its connection, and `defer` for rows a participant such as the audit trail
writes at the end of the batch). `Store.submit(unit)` queues it; one writer task per store takes
every unit waiting (having first let the event loop turn `GATHER_TURNS` times, so that the attempts
already on their way join the batch), runs them one after another in **one transaction**, lets the
participants flush what the units deferred, and commits. Each caller is answered only after that commit
(durable: SQLite runs `synchronous=FULL`, PostgreSQL's default `synchronous_commit=on`), so
concurrent attempts share one sync instead of paying one each. A unit that raises is rolled back
alone: the transaction is rolled back and the other units run again in a new one (units read
before they write, so running one again is safe); it never reaches the commit.

**Why units and reads are synchronous functions.** A batch (or a read) is handed to the database
in one piece: on SQLite to a worker thread holding a plain `sqlite3` connection (aiosqlite would
hop to its thread and back for every cursor call, five hops a statement: most of an attempt's
CPU when profiled); on PostgreSQL through `AsyncConnection.run_sync`, where the same code drives
asyncpg on the event loop. The event loop never waits on SQLite's locks or its fsync.

Participants (`Participant`) are told when each batch begins, before any unit runs: the audit
trail locks its head row there, which lines batches up across processes (every batch takes that
lock first, so batches of different replicas never wait on each other's device rows in a cycle).

**Prepared statements.** SQLAlchemy Core costs ~40 µs to execute a statement on SQLite (the
compiled cache's lookup, the execution context, parameter and result processing) where the
`sqlite3` driver itself takes ~7 µs. The hot statements (the rules' read of a device's facts, the
rate-limit check and counts, the audit flush, the new pair) are `PreparedStatement`s: built once
with Core, compiled once per dialect, and on SQLite run on the driver's own connection with the
same type conversions Core applies. On PostgreSQL they go through Core (asyncpg prepares and
caches them itself). Either way the caller writes the same line and gets the same rows. On
SQLite the event loop's reads share one held connection, and so do the writer's batches.

`Store.engine` is an async engine over the same database for everything off the hot path:
creating tables, seeding (`transaction`), tools and tests. `schema_engine` is one for schema work
(the migrations of `gateway.schema_versions`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote

import anyio.to_thread
from anyio import CapacityLimiter
from sqlalchemy import Connection, DateTime, Engine, MetaData, Table, TypeDecorator, create_engine, event, text
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.selectable import ExecutableReturnsRows

from gateway.metrics import STORE_COMMITS

if TYPE_CHECKING:
    from gateway.tracing import Tracing

log = logging.getLogger(__name__)

T = TypeVar("T")

metadata = MetaData()
"""Every table of the gateway, each declared by the module that owns it."""

MAX_BATCH = 128
"""Units committed together at most: bounds a batch's transaction time."""
GATHER_TURNS = 4
"""Turns of the event loop the writer lets pass before it takes a batch. A request reaches
`submit` a few turns after its bytes arrived (its body read, its reads done); letting the loop
turn this often first gathers the attempts already under way into the batch, instead of
committing the one or two that came first and the rest in the next. Idle, it delays a commit by
four empty turns (microseconds). Measured (bench scenario 2 served alone, 16 connections): 8
units a batch became 16, and an attempt's CPU fell from 421 to 352 µs; scenario 5's by 7 %."""
READERS = 4
"""SQLite: connections for reads in worker threads (snapshots, and reads that found the database busy)."""
POSTGRES_POOL_SIZE = 20
"""PostgreSQL: pooled connections per process (beyond them, up to 10 more on demand)."""
BUSY_TIMEOUT_SECONDS = 30
"""SQLite: how long a writer waits for another process's write lock before failing."""


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


Params = Mapping[str, Any]
Processor = Callable[[Any], Any]
_NO_PARAMS: Params = {}


class PreparedStatement:
    """A hot statement: built once with Core, compiled once per dialect, run on SQLite's driver.

    On SQLite the statement is compiled to its SQL and the order of its parameters, with the bind
    and result processors of its types (those Core itself applies: `UTCDateTime` to and from
    text in UTC, enums by value, booleans), and runs on the connection's `sqlite3` connection, in
    whatever transaction that connection is in: ~7 µs where Core takes ~40 µs. `sqlite3` caches
    the statement compiled by SQL text. Its errors are raised as Core's would be
    (`OperationalError`, `IntegrityError`, …, its parameters hidden). On PostgreSQL it is
    executed through Core (so is it through aiosqlite, off the hot path). Every call gives plain
    tuples, on both databases.

    Parameters are passed by name, as to `Connection.execute`; values the statement carries
    itself (`.values(count=1)`, `id == 1`) need not be. No expanding parameters (`in_` of a
    list): the SQL is fixed once.
    """

    def __init__(self, statement: ExecutableReturnsRows) -> None:
        self.statement = statement
        self._compiled: dict[str, _Compiled] = {}

    def rows(self, connection: Connection, params: Params = _NO_PARAMS) -> list[tuple[Any, ...]]:
        """Every row the statement returns (a SELECT's, or an INSERT's or UPDATE's RETURNING)."""
        driver = _sqlite3(connection)
        if driver is None:
            return [tuple(row) for row in connection.execute(self.statement, params)]
        compiled = self._compiled.get("sqlite") or self._compile(connection.dialect)
        args = compiled.args(params)
        try:
            # fetchall: the statement is run to its end, so that no implicit read transaction
            # outlives it (a reader kept open for good would otherwise read an old snapshot).
            found = driver.execute(compiled.sql, args).fetchall()
        except sqlite3.Error as error:
            raise _wrapped(error, compiled.sql, args, connection.dialect) from error
        return compiled.convert(found)

    def first(self, connection: Connection, params: Params = _NO_PARAMS) -> tuple[Any, ...] | None:
        """The first row, or None (the statement is still run to its end)."""
        found = self.rows(connection, params)
        return found[0] if found else None

    def execute(self, connection: Connection, params: Params = _NO_PARAMS) -> int:
        """Run a statement that returns no rows; the number of rows it changed."""
        driver = _sqlite3(connection)
        if driver is None:
            return connection.execute(self.statement, params).rowcount
        compiled = self._compiled.get("sqlite") or self._compile(connection.dialect)
        args = compiled.args(params)
        try:
            return driver.execute(compiled.sql, args).rowcount
        except sqlite3.Error as error:
            raise _wrapped(error, compiled.sql, args, connection.dialect) from error

    def execute_many(self, connection: Connection, params: Sequence[Params]) -> None:
        """Run a statement that returns no rows once per set of `params`, in one call to the driver."""
        if not params:
            return
        driver = _sqlite3(connection)
        if driver is None:
            connection.execute(self.statement, list(params))
            return
        compiled = self._compiled.get("sqlite") or self._compile(connection.dialect)
        many = [compiled.args(each) for each in params]
        try:
            driver.executemany(compiled.sql, many)
        except sqlite3.Error as error:
            raise _wrapped(error, compiled.sql, many, connection.dialect) from error

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = self.statement.compile(dialect=dialect)
        names = compiled.positiontup
        if names is None or "POSTCOMPILE" in compiled.string:
            raise ArgumentError("a PreparedStatement needs positional parameters and no expanding ones")
        # Each type as the dialect has it (SQLite's DATETIME, not the generic DateTime): Core's own processors.
        binds: dict[str, Processor | None] = {}
        carried: dict[str, Any] = {}
        for name in names:
            bind = compiled.binds[name]
            binds[name] = process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if not bind.required:
                value = bind.effective_value
                carried[name] = value if process is None else process(value)
        columns = self.statement.exported_columns
        results = tuple(column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns)
        converts = results if any(results) else None
        prepared = _Compiled(compiled.string, tuple(names), tuple(binds.items()), carried, converts)
        self._compiled[dialect.name] = prepared
        return prepared


@dataclass(frozen=True)
class _Compiled:
    """A statement compiled for one dialect: its SQL, and what turns values into its parameters and rows."""

    sql: str
    positions: tuple[str, ...]
    """The name of each positional parameter, in the SQL's order (a name used twice, twice)."""
    binds: tuple[tuple[str, Processor | None], ...]
    """Each parameter's name, once, and its bind processor."""
    carried: dict[str, Any]
    """The parameters the statement carries itself, processed once."""
    results: tuple[Processor | None, ...] | None
    """Each result column's processor (None: the driver's values are Core's too)."""

    def args(self, params: Params) -> list[Any]:
        values = self.carried.copy()
        for name, process in self.binds:
            if name in params:
                value = params[name]
                values[name] = value if process is None else process(value)
            elif name not in values:
                raise ArgumentError(f"a value is required for the parameter {name!r}")
        return [values[name] for name in self.positions]

    def convert(self, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        results = self.results
        if results is None:
            return rows
        return [
            tuple([value if process is None else process(value) for value, process in zip(row, results, strict=True)])
            for row in rows
        ]


def _sqlite3(connection: Connection) -> sqlite3.Connection | None:
    """The connection's `sqlite3` connection; None on PostgreSQL and through aiosqlite (tools and seeding)."""
    driver = connection.connection.driver_connection
    return driver if isinstance(driver, sqlite3.Connection) else None


def _wrapped(error: Exception, sql: str, params: Sequence[Any], dialect: Dialect) -> BaseException:
    """The driver's `error` as Core would raise it (`OperationalError`, `IntegrityError`, …), its
    parameters hidden from its message (and so from any log of it)."""
    base = dialect.loaded_dbapi.Error
    wrapped = DBAPIError.instance(sql, params, error, base, hide_parameters=True, dialect=dialect)
    assert isinstance(wrapped, BaseException)
    return wrapped


@dataclass
class UnitOfWork:
    """One unit's share of a batch transaction."""

    connection: Connection
    deferred: list[tuple[Participant, object]] = field(default_factory=list)

    def defer(self, participant: Participant, item: object) -> None:
        """Hand `item` to `participant.flush` at the end of the batch (dropped if this unit fails)."""
        self.deferred.append((participant, item))


Unit = Callable[[UnitOfWork], T]
Read = Callable[[Connection], T]


class Participant(Protocol):
    """A writer of rows on behalf of many units, once per batch (the audit trail)."""

    def begin_batch(self, connection: Connection) -> None:
        """Called first in every batch transaction, before any unit runs."""

    def flush(self, connection: Connection, items: Sequence[object]) -> None:
        """Write what the batch's units deferred to this participant, in their order."""


@dataclass
class _Pending:
    unit: Unit[Any]
    answer: asyncio.Future[Any]
    trace: object = None
    """The submitter's trace context, with tracing on: its batch's span is linked to it."""


Outcome = tuple[list[Any], tuple[int, Exception] | None]
"""A batch's results, and the index and error of the unit that failed (None: all committed)."""


class Store:
    """An open store: its engines and pools and its group-commit writer.

    Open with `Store.open`, close with `close` (the app's lifespan does both).
    """

    def __init__(self, engine: AsyncEngine, *, sqlite: SqliteEngines | None = None) -> None:
        self.engine = engine
        self._sqlite = sqlite
        # One batch at a time; SQLite's reads run in threads of their own, as many as connections.
        self._write_thread = CapacityLimiter(1)
        self._read_threads = CapacityLimiter(READERS)
        self._reader: Connection | None = None
        """SQLite: the event loop's reader connection, held from the first read to `dispose`."""
        self._batches: Connection | None = None
        """SQLite: the writer's connection, held from the first batch to `dispose`."""
        self.participants: list[Participant] = []
        self._queue: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self.tracing: Tracing | None = None
        """With `GATEWAY_OTEL=true`, a span per batch transaction (the app's lifespan sets it)."""

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self.engine.dialect.name

    @property
    def write_engine(self) -> Engine:
        """The engine whose connections run the batches (where their commits can be watched)."""
        return self._sqlite.writer if self._sqlite else self.engine.sync_engine

    @classmethod
    async def open(cls, url: str, *, schema: str = "", tables: Sequence[Table] = (), create: bool = True) -> Store:
        """Connect (creating a SQLite file's folder) and, unless told not to, create the missing `tables`."""
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite":
            # Every attempt holds a connection briefly for each of its reads, and the writer one for
            # each batch: SQLAlchemy's default 5 (+10 overflow) left callers queueing for the pool.
            # hide_parameters (here and on SQLite's engines): a failing statement's error, and so
            # its traceback in a log, names the statement but not its values (study, subject and
            # device ids, access IDs).
            options: dict[str, Any] = {"pool_pre_ping": True, "pool_size": POSTGRES_POOL_SIZE, "hide_parameters": True}
            if schema:
                options["execution_options"] = {"schema_translate_map": {None: schema}}
            store = cls(create_async_engine(parsed, **options))
        else:
            sqlite = SqliteEngines.open(parsed)
            store = cls(sqlite.engine, sqlite=sqlite)
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

    async def read(self, query: Read[T]) -> T:
        """Run `query` on a connection of its own; on SQLite each statement reads a snapshot of its
        own and never takes the write lock. `query` must consume the results it asks for.

        SQLite reads run right here, on the event loop: a point read of a page in the OS cache
        costs tens of microseconds, a hop to a worker thread and back several times that (measured:
        a refusal's two reads took 0.3 ms of CPU each through a thread, the whole attempt 0.44 ms
        without). They share one connection, held open from the first read on (reads on the loop
        never overlap), in autocommit: no pool checkout per read, and between two statements it
        holds no snapshot, so it never keeps a checkpoint from finishing. A WAL reader never waits
        for a writer; should it ever find the database busy (a checkpoint's rare moment), it does
        not wait (busy timeout 0) and the read is done again in a worker thread, on a connection
        that may wait. A read that fails gives its connection back; the next one takes a fresh one.
        """
        if self._sqlite is None:
            async with self.engine.connect() as conn:
                return await conn.run_sync(query)
        reader = self._reader
        try:
            if reader is None:
                reader = self._reader = self._sqlite.reader.connect()
            return query(reader)
        except OperationalError as busy:
            self._drop_reader()
            if "locked" not in str(busy.orig):
                raise
        except BaseException:
            self._drop_reader()
            raise
        return await anyio.to_thread.run_sync(_read, self._sqlite.waiting_reader, query, limiter=self._read_threads)

    def _drop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    async def snapshot(self, query: Read[T]) -> T:
        """Run `query` in one read-only transaction: every statement sees the same snapshot, and no
        writer waits for it (SQLite: a WAL read transaction, in a worker thread; PostgreSQL:
        REPEATABLE READ, READ ONLY). For long reads such as verifying the whole audit trail."""
        if self._sqlite is not None:
            reader = self._sqlite.waiting_reader
            return await anyio.to_thread.run_sync(_snapshot, reader, query, limiter=self._read_threads)
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            async with conn.begin():
                return await conn.run_sync(query)

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
        self._queue.append(_Pending(unit, answer, self.tracing.current() if self.tracing else None))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="store-group-commit")
        return await answer

    async def _write(self) -> None:
        batch: list[_Pending] = []
        try:
            while self._queue:
                for _ in range(GATHER_TURNS if len(self._queue) < MAX_BATCH else 0):
                    await asyncio.sleep(0)
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
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
            units = [pending.unit for pending in batch]
            try:
                if self.tracing is None:
                    results, failed = await self._run(units)
                else:
                    results, failed = await self._run_traced(self.tracing, batch)
            except Exception as error:  # the begin, a participant or the commit failed: nothing is stored
                for pending in batch:
                    _answer(pending.answer, error=error)
                return
            if failed is None:
                STORE_COMMITS.inc()
                for pending, result in zip(batch, results, strict=True):
                    _answer(pending.answer, result=result)
                return
            # One unit failed: it alone is answered with its error; the others run again.
            index, unit_error = failed
            _answer(batch[index].answer, error=unit_error)
            batch = batch[:index] + batch[index + 1 :]

    async def _run_traced(self, tracing: Tracing, batch: list[_Pending]) -> Outcome:
        """`_run` in a span of its own: the dialect, the units, whether one failed (never what it raised)."""
        with tracing.store_transaction(self.dialect, [pending.trace for pending in batch]):
            results, failed = await self._run([pending.unit for pending in batch])
            tracing.note("gateway.store.outcome", "committed" if failed is None else "rolled back: a unit failed")
            return results, failed

    async def _run(self, units: list[Unit[Any]]) -> Outcome:
        if self._sqlite is not None:
            return await anyio.to_thread.run_sync(self._run_held, units, limiter=self._write_thread)
        async with self.engine.connect() as conn:
            return await conn.run_sync(self._run_batch, units)

    def _run_held(self, units: list[Unit[Any]]) -> Outcome:
        """SQLite: the batch on the writer's one connection, held from batch to batch (one batch
        runs at a time) rather than taken from its pool and given back each time. A batch that
        fails as a whole (its begin, a participant, the commit) gives it back; the next takes a
        fresh one."""
        assert self._sqlite is not None
        conn = self._batches
        if conn is None:
            conn = self._batches = self._sqlite.writer.connect()
        try:
            return self._run_batch(conn, units)
        except BaseException:
            self._batches = None
            conn.close()
            raise

    def _run_batch(self, conn: Connection, units: list[Unit[Any]]) -> Outcome:
        results: list[Any] = []
        works: list[UnitOfWork] = []
        with conn.begin() as transaction:
            for participant in self.participants:
                participant.begin_batch(conn)
            for index, unit in enumerate(units):
                work = UnitOfWork(conn)
                try:
                    results.append(unit(work))
                except Exception as error:
                    transaction.rollback()
                    return results, (index, error)
                works.append(work)
            deferred: dict[int, tuple[Participant, list[object]]] = {}
            for work in works:
                for owner, item in work.deferred:
                    deferred.setdefault(id(owner), (owner, []))[1].append(item)
            for owner, items in deferred.values():
                owner.flush(conn, items)
        return results, None

    async def ping(self) -> bool:
        """True when the database answers a trivial query within 5 s."""
        try:
            with anyio.fail_after(5):
                await self.read(lambda conn: conn.execute(text("SELECT 1")).scalar())
        except (SQLAlchemyError, OSError, TimeoutError):
            log.warning("the store did not answer", exc_info=True)
            return False
        return True

    async def close(self) -> None:
        """Let queued units finish, then close the pools."""
        self._closed = True
        if self._writer is not None:
            with suppress(Exception):
                await self._writer
        await self.dispose()

    async def dispose(self) -> None:
        self._drop_reader()
        batches, self._batches = self._batches, None
        if batches is not None:
            batches.close()
        await self.engine.dispose()
        if self._sqlite is not None:
            for engine in (self._sqlite.writer, self._sqlite.reader, self._sqlite.waiting_reader):
                engine.dispose()


def _read(engine: Engine, query: Read[T]) -> T:
    with engine.connect() as conn:
        return query(conn)


def _private_database(path: Path) -> None:
    """The database file (and so its -wal and -shm files, which SQLite makes with the same mode)
    readable by its owner only, in a folder of mode 0700 when the gateway makes it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    if os.name == "posix" and path.stat().st_mode & 0o077:
        path.chmod(0o600)


def _snapshot(engine: Engine, query: Read[T]) -> T:
    with engine.connect() as conn:
        conn.exec_driver_sql("BEGIN")  # deferred: a read transaction, one WAL snapshot, no write lock
        try:
            return query(conn)
        finally:
            conn.exec_driver_sql("ROLLBACK")


def _answer(future: asyncio.Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


@dataclass(frozen=True)
class SqliteEngines:
    """SQLite: the async engine (aiosqlite) for tools and seeding, and plain `sqlite3` engines for
    the hot path: one connection for the writer's batches (in a worker thread), and readers.

    SQLite has one writer at a time: one writer connection per process queues this process's
    batches, where several would poll SQLite's busy handler (sleeps of up to 100 ms) and stretch
    the latency tail.
    """

    engine: AsyncEngine
    writer: Engine
    reader: Engine
    """Reads on the event loop, on one connection: never waits for a lock (busy timeout 0)."""
    waiting_reader: Engine
    """Reads in a worker thread, when the database was busy for `reader`, and snapshots."""

    @classmethod
    def open(cls, url: URL) -> SqliteEngines:
        if url.database and url.database != ":memory:":
            _private_database(Path(url.database))
        plain = url.set(drivername="sqlite+pysqlite")
        engine = create_async_engine(
            url,
            connect_args={"timeout": BUSY_TIMEOUT_SECONDS},
            pool_size=1,
            max_overflow=0,
            pool_timeout=30,
            hide_parameters=True,
        )
        waits = {"timeout": BUSY_TIMEOUT_SECONDS, "check_same_thread": False}
        writer = create_engine(plain, connect_args=waits, pool_size=1, max_overflow=0, hide_parameters=True)
        # Reads are single statements: each its own implicit transaction, no BEGIN or ROLLBACK.
        reads = {"isolation_level": "AUTOCOMMIT", "hide_parameters": True}
        reader = create_engine(plain, connect_args={"timeout": 0, "check_same_thread": False}, pool_size=1, **reads)
        waiting_reader = create_engine(plain, connect_args=waits, pool_size=READERS, **reads)
        for each in (engine.sync_engine, writer):
            _tune_sqlite(each, begin="BEGIN IMMEDIATE")
        for each in (reader, waiting_reader):
            _tune_sqlite(each, begin=None)
        return cls(engine, writer, reader, waiting_reader)


def _tune_sqlite(engine: Engine, *, begin: str | None, foreign_keys: bool = True) -> None:
    """Let SQLAlchemy, not the driver, begin transactions, with `begin` (None: reads in autocommit).

    Writers begin IMMEDIATE: pysqlite's own BEGIN is deferred, and two transactions that read
    and then write would deadlock and one would fail with "database is locked"; BEGIN IMMEDIATE
    takes the write lock first and the other (another process's writer) waits its turn (up to the
    busy timeout). Readers run each statement in its own implicit transaction: they never take
    the write lock. WAL lets readers run beside a writer; `synchronous=FULL` makes every commit
    durable on power loss (WAL's NORMAL may lose the last commits), and group commit keeps its
    cost at one sync per batch.

    Schema work turns `foreign_keys` off: SQLite ignores `PRAGMA foreign_keys` inside a
    transaction, so a revision could not turn them off itself, and rebuilding a table others refer
    to (`op.batch_alter_table`: copy, drop, rename) would fail on the DROP. The migration checks the
    references itself before it commits (`PRAGMA foreign_key_check`, `gateway.schema_versions`).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    if begin is not None:

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # On the driver's cursor (`exec_driver_sql` would cost a whole execution context), its
            # error raised as Core's would be: no write lock within the busy timeout, OperationalError.
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(begin)
            except conn.dialect.loaded_dbapi.Error as error:
                raise _wrapped(error, begin, (), conn.dialect) from error
            finally:
                cursor.close()


def sqlite_file(url: str) -> Path | None:
    """The absolute path of the file a SQLite URL names (None: not SQLite, or in memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).resolve()


def schema_engine(url: str, *, schema: str = "", write: bool = True) -> AsyncEngine:
    """An engine for schema work (migrations and their checks), one unpooled connection at a time.

    SQLite, `write` (migrating): the file is made as the store's (0600 in a 0700 folder) and
    transactions begin IMMEDIATE, so that two processes migrating at once take turns. Not `write`
    (status checks): the file is opened, never made (a URI filename with `mode=rw`), and
    transactions are plain deferred reads, which never wait behind a busy gateway's writer (WAL).
    Either way foreign keys are off (see `_tune_sqlite`). PostgreSQL gets `schema` alone on
    its search path from the connection's first moment: unqualified DDL, Alembic's version table
    and reflection then all live in that schema (`schema_translate_map`, which the store uses,
    does not reach reflection, and the dialect learns its default schema on first connect).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_file(url)
        if path is not None and write:
            _private_database(path)
        elif path is not None:
            parsed = parsed.set(database=f"file:{quote(str(path))}").update_query_dict({"mode": "rw", "uri": "true"})
        engine = create_async_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_SECONDS}, poolclass=NullPool)
        _tune_sqlite(engine.sync_engine, begin="BEGIN IMMEDIATE" if write else "BEGIN", foreign_keys=False)
        return engine
    quoted = '"' + schema.replace('"', '""') + '"'
    connect_args = {"server_settings": {"search_path": quoted}} if schema else {}
    return create_async_engine(parsed, connect_args=connect_args, poolclass=NullPool)
