"""The local engine's store: SQLAlchemy Core over SQLite (aiosqlite) or PostgreSQL (asyncpg).

One code path for both databases. Correctness under concurrency comes from the database:
every write runs in a transaction; the device row is locked (`SELECT … FOR UPDATE` on
PostgreSQL; SQLite takes its database write lock at `BEGIN IMMEDIATE`), and the credential
row's primary key and unique access id settle races between processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Enum,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.domain import DeviceRef, StudyMode
from gateway.engine.registry import ConnectionType, Registry, RegistryError


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


metadata = MetaData()
_mode = Enum(StudyMode, name="study_mode", values_callable=lambda e: [m.value for m in e], native_enum=False)
_connection = Enum(ConnectionType, name="connection_type", native_enum=False)

study_modes = Table(
    "study_modes",
    metadata,
    Column("study_id", String(32), primary_key=True),
    Column("mode", _mode, primary_key=True),
    Column("mhealth_configured", Boolean, nullable=False),
)

subjects = Table(
    "subjects",
    metadata,
    Column("study_id", String(32), primary_key=True),
    Column("mode", _mode, primary_key=True),
    Column("subject_id", String(32), primary_key=True),
    Column("m_subject_id", String(64), nullable=False),
    ForeignKeyConstraint(["study_id", "mode"], ["study_modes.study_id", "study_modes.mode"]),
)

devices = Table(
    "devices",
    metadata,
    Column("study_id", String(32), primary_key=True),
    Column("mode", _mode, primary_key=True),
    Column("inventory_id", String(64), primary_key=True),
    Column("instance_id", String(32), nullable=False),
    Column("connection_type", _connection, nullable=True),
    Column("vendor_code", String(64), nullable=True),
    Column("registered", Boolean, nullable=False),
    Column("dispensed_to", String(32), nullable=True),
    ForeignKeyConstraint(["study_id", "mode"], ["study_modes.study_id", "study_modes.mode"]),
)

# One row per device: replacing it is what makes the previous pair stop working.
credentials = Table(
    "credentials",
    metadata,
    Column("study_id", String(32), primary_key=True),
    Column("mode", _mode, primary_key=True),
    Column("inventory_id", String(64), primary_key=True),
    Column("access_id", String(16), nullable=False, unique=True),
    Column("otp_hash", String(255), nullable=False),
    Column("issued_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("used_at", UTCDateTime, nullable=True),
    Column("failed_attempts", Integer, nullable=False, default=0),
    Column("locked_at", UTCDateTime, nullable=True),
    ForeignKeyConstraint(
        ["study_id", "mode", "inventory_id"], ["devices.study_id", "devices.mode", "devices.inventory_id"]
    ),
)

# Gateway-wide tables, for every backend: the audit trail and the rate-limit counters.

# One row per attempt, never updated or deleted. `hash` chains each row to the one before it.
audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", UTCDateTime, nullable=False),
    Column("action", String(32), nullable=False),
    Column("outcome", String(64), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("caller", String(255), nullable=True),
    Column("client_id", String(255), nullable=True),
    Column("study_id", String(100), nullable=True),
    Column("mode", String(100), nullable=True),
    Column("subject_id", String(100), nullable=True),
    Column("inventory_id", String(100), nullable=True),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# The chain's head: one row, locked by each append so that appends from every process line up.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

# Fixed-window counters: one row per limited key (a device, a caller).
rate_counters = Table(
    "rate_counters",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("window_start", UTCDateTime, nullable=False),
    Column("count", Integer, nullable=False),
)


@dataclass(frozen=True)
class DeviceFacts:
    """What the store knows about a `DeviceRef`, for the engine's rules to judge."""

    study_mode_known: bool
    mhealth_configured: bool
    subject_m_subject_id: str | None
    """The subject's mHealth id, or None when the subject is unknown in the study and mode."""
    device: Any | None
    """The device row (`instance_id`, `connection_type`, `vendor_code`, `registered`, `dispensed_to`)."""


@dataclass(frozen=True)
class StoredPair:
    """A device's current credential row: no OTP, only its hash."""

    study_id: str
    mode: StudyMode
    inventory_id: str
    access_id: str
    otp_hash: str
    issued_at: datetime
    expires_at: datetime
    used_at: datetime | None
    failed_attempts: int
    locked_at: datetime | None


class StoreTransaction:
    """The store's queries, inside one database transaction."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection

    async def facts(self, ref: DeviceRef, *, lock: bool = False) -> DeviceFacts:
        """Everything the rules need, in the order they need it; `lock` holds the device row."""
        conn = self.connection
        mode_row = (
            await conn.execute(
                select(study_modes.c.mhealth_configured).where(
                    study_modes.c.study_id == ref.study_id, study_modes.c.mode == ref.mode
                )
            )
        ).first()
        m_subject_id = (
            await conn.execute(
                select(subjects.c.m_subject_id).where(
                    subjects.c.study_id == ref.study_id,
                    subjects.c.mode == ref.mode,
                    subjects.c.subject_id == ref.subject_id,
                )
            )
        ).scalar()
        device_query = select(devices).where(
            devices.c.study_id == ref.study_id,
            devices.c.mode == ref.mode,
            devices.c.inventory_id == ref.inventory_id,
        )
        if lock:
            device_query = device_query.with_for_update()
        device = (await conn.execute(device_query)).first()
        return DeviceFacts(
            study_mode_known=mode_row is not None,
            mhealth_configured=bool(mode_row and mode_row.mhealth_configured),
            subject_m_subject_id=m_subject_id,
            device=device,
        )

    async def replace_pair(
        self, ref: DeviceRef, *, access_id: str, otp_hash: str, issued_at: datetime, expires_at: datetime
    ) -> None:
        """Make (access_id, otp_hash) the device's only pair. Raises IntegrityError on a taken access id."""
        values = {
            "access_id": access_id,
            "otp_hash": otp_hash,
            "issued_at": issued_at,
            "expires_at": expires_at,
            "used_at": None,
            "failed_attempts": 0,
            "locked_at": None,
        }
        key = {"study_id": ref.study_id, "mode": ref.mode, "inventory_id": ref.inventory_id}
        result = await self.connection.execute(
            update(credentials).where(*(credentials.c[name] == value for name, value in key.items())).values(values)
        )
        if result.rowcount == 0:
            await self.connection.execute(insert(credentials).values({**key, **values}))

    async def pair(self, access_id: str) -> StoredPair | None:
        row = (await self.connection.execute(select(credentials).where(credentials.c.access_id == access_id))).first()
        return None if row is None else StoredPair(**row._mapping)

    async def mark_used(self, pair: StoredPair, now: datetime) -> bool:
        """Spend the pair once: true only for the one caller whose update found it unused and unlocked."""
        result = await self.connection.execute(
            update(credentials)
            .where(
                credentials.c.access_id == pair.access_id,
                credentials.c.otp_hash == pair.otp_hash,
                credentials.c.used_at.is_(None),
                credentials.c.locked_at.is_(None),
            )
            .values(used_at=now)
        )
        return result.rowcount == 1

    async def instance_id(self, pair: StoredPair) -> str:
        query = select(devices.c.instance_id).where(
            devices.c.study_id == pair.study_id,
            devices.c.mode == pair.mode,
            devices.c.inventory_id == pair.inventory_id,
        )
        instance_id: str = (await self.connection.execute(query)).scalar_one()
        return instance_id

    async def record_failure(self, pair: StoredPair, now: datetime, lock_after: int) -> bool:
        """Count a wrong OTP against the pair (atomically); lock it at `lock_after`. True when now locked."""
        this_pair = (credentials.c.access_id == pair.access_id, credentials.c.otp_hash == pair.otp_hash)
        await self.connection.execute(
            update(credentials).where(*this_pair).values(failed_attempts=credentials.c.failed_attempts + 1)
        )
        result = await self.connection.execute(
            update(credentials)
            .where(*this_pair, credentials.c.failed_attempts >= lock_after, credentials.c.locked_at.is_(None))
            .values(locked_at=now)
        )
        return result.rowcount == 1

    async def is_empty(self) -> bool:
        return (await self.connection.execute(select(func.count()).select_from(study_modes))).scalar_one() == 0

    async def upsert_registry(self, registry: Registry) -> None:
        """Insert or update every entry; raise `RegistryError` (and so roll back) on a dangling reference."""
        await self._check_references(registry)
        mode_rows = [
            {"study_id": s.id, "mode": mode, "mhealth_configured": mode in s.mhealth_settings}
            for s in registry.studies
            for mode in s.modes
        ]
        subject_rows = [
            {"study_id": s.study_id, "mode": s.mode, "subject_id": s.id, "m_subject_id": s.m_subject_id}
            for s in registry.subjects
        ]
        device_rows = [
            {
                "study_id": d.study_id,
                "mode": d.mode,
                "inventory_id": d.inventory_id,
                "instance_id": d.instance_id,
                "connection_type": d.connection_type,
                "vendor_code": d.vendor_code,
                "registered": d.registered,
                "dispensed_to": d.dispensed_to,
            }
            for d in registry.devices
        ]
        await self._upsert(study_modes, ("study_id", "mode"), mode_rows)
        await self._upsert(subjects, ("study_id", "mode", "subject_id"), subject_rows)
        await self._upsert(devices, ("study_id", "mode", "inventory_id"), device_rows)

    async def _upsert(self, table: Table, key: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
        """Portable upsert: the rows whose key exists are updated, the others inserted, each in one batch."""
        if not rows:
            return
        existing = {tuple(row) for row in await self.connection.execute(select(*(table.c[name] for name in key)))}
        fresh = [row for row in rows if tuple(row[name] for name in key) not in existing]
        stale = [row for row in rows if tuple(row[name] for name in key) in existing]
        if fresh:
            await self.connection.execute(insert(table), fresh)
        for row in stale:
            await self.connection.execute(
                update(table)
                .where(*(table.c[name] == row[name] for name in key))
                .values({name: value for name, value in row.items() if name not in key})
            )

    async def _check_references(self, registry: Registry) -> None:
        known_modes: set[tuple[Any, ...]] = set(registry.study_modes())
        known_subjects: set[tuple[Any, ...]] = set(registry.subject_keys())
        for index, subject in enumerate(registry.subjects):
            if not await self._known(known_modes, study_modes, study_id=subject.study_id, mode=subject.mode):
                raise RegistryError(
                    f"subjects[{index}] (id {subject.id}).studyId: study {subject.study_id} "
                    f"has no mode {subject.mode.value} in the file or the store"
                )
        for index, device in enumerate(registry.devices):
            where = f"devices[{index}] (inventoryId {device.inventory_id})"
            if not await self._known(known_modes, study_modes, study_id=device.study_id, mode=device.mode):
                raise RegistryError(
                    f"{where}.studyId: study {device.study_id} has no mode {device.mode.value} in the file or the store"
                )
            if device.dispensed_to is not None and not await self._known(
                known_subjects, subjects, study_id=device.study_id, mode=device.mode, subject_id=device.dispensed_to
            ):
                raise RegistryError(
                    f"{where}.dispensedTo: subject {device.dispensed_to} is not in study {device.study_id} "
                    f"({device.mode.value}) in the file or the store"
                )

    async def _known(self, known: set[tuple[Any, ...]], table: Table, **key: Any) -> bool:
        """Is this key (columns in the order given) in the file's `known` keys or in `table`?"""
        values = tuple(key.values())
        if values in known:
            return True
        query = select(*table.primary_key.columns).where(*(table.c[name] == value for name, value in key.items()))
        found = (await self.connection.execute(query)).first() is not None
        if found:
            known.add(values)
        return found


class Store:
    """An open store: an async engine with its pool. Open with `Store.open`, close with `close`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    async def open(cls, url: str, *, schema: str = "", create: bool = True) -> Store:
        """Connect (creating a SQLite file's folder) and, unless told not to, create missing tables."""
        parsed = make_url(url)
        options: dict[str, Any] = {"pool_pre_ping": True}
        if parsed.get_backend_name() == "sqlite":
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
        if parsed.get_backend_name() == "sqlite":
            _configure_sqlite(engine)
        store = cls(engine)
        if create:
            try:
                await store.create_schema()
            except BaseException:
                await engine.dispose()
                raise
        return store

    async def create_schema(self) -> None:
        """Create the tables that do not exist yet (idempotent)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[StoreTransaction]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        async with self.engine.begin() as conn:
            yield StoreTransaction(conn)

    async def seed(self, registry: Registry) -> None:
        """Upsert a registry in one transaction: all of it or, on any error, none of it."""
        async with self.transaction() as tx:
            await tx.upsert_registry(registry)

    async def is_empty(self) -> bool:
        async with self.transaction() as tx:
            return await tx.is_empty()

    async def close(self) -> None:
        await self.engine.dispose()


def _configure_sqlite(engine: AsyncEngine) -> None:
    """Let SQLAlchemy, not the driver, begin transactions, and begin them IMMEDIATE.

    pysqlite's own BEGIN is deferred: two transactions that read and then write would deadlock
    and one would fail with "database is locked". BEGIN IMMEDIATE takes the write lock first and
    the other waits its turn (up to the connect timeout). WAL lets readers run beside a writer.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
