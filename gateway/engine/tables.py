"""The local engine's tables and its SQL: the registry (study modes, subjects, devices) and the
credentials, with the queries the engine runs on a connection (plain functions: a read or a
unit of work of `gateway.store` runs them; the hot ones are `PreparedStatement`s).

One credential row per device: replacing it is what makes the previous pair stop working; only a
salted hash of the OTP is stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Enum,
    ForeignKeyConstraint,
    Integer,
    String,
    Table,
    and_,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from gateway.domain import DeviceRef, StudyMode
from gateway.engine.registry import ConnectionType, Device, Registry, RegistryError
from gateway.engine.rules import DeviceFacts
from gateway.store import PreparedStatement, Store, UTCDateTime, metadata

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

TABLES = (study_modes, subjects, devices, credentials)


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


_FACTS = PreparedStatement(
    select(
        study_modes.c.mhealth_configured,
        subjects.c.m_subject_id,
        devices.c.instance_id,
        devices.c.connection_type,
        devices.c.vendor_code,
        devices.c.registered,
        devices.c.dispensed_to,
    )
    .select_from(
        study_modes.outerjoin(
            subjects,
            and_(
                subjects.c.study_id == study_modes.c.study_id,
                subjects.c.mode == study_modes.c.mode,
                subjects.c.subject_id == bindparam("subject_id"),
            ),
        ).outerjoin(
            devices,
            and_(
                devices.c.study_id == study_modes.c.study_id,
                devices.c.mode == study_modes.c.mode,
                devices.c.inventory_id == bindparam("inventory_id"),
            ),
        )
    )
    .where(study_modes.c.study_id == bindparam("study_id"), study_modes.c.mode == bindparam("mode"))
)
_LOCK_DEVICE = (
    select(devices.c.inventory_id)
    .where(
        devices.c.study_id == bindparam("study_id"),
        devices.c.mode == bindparam("mode"),
        devices.c.inventory_id == bindparam("inventory_id"),
    )
    .with_for_update()
)


def _key(ref: DeviceRef) -> dict[str, Any]:
    return {"study_id": ref.study_id, "mode": ref.mode, "inventory_id": ref.inventory_id}


def facts(conn: Connection, ref: DeviceRef, *, lock: bool = False) -> DeviceFacts:
    """Everything the rules need, in one query; `lock` first holds the device row (PostgreSQL; on
    SQLite the transaction's write lock already holds the whole database)."""
    if lock and conn.dialect.name == "postgresql":
        conn.execute(_LOCK_DEVICE, _key(ref))
    row = _FACTS.first(conn, {**_key(ref), "subject_id": ref.subject_id})
    if row is None:
        return DeviceFacts(study_mode_known=False, mhealth_configured=False, subject_m_subject_id=None, device=None)
    mhealth_configured, m_subject_id, instance_id, connection_type, vendor_code, registered, dispensed_to = row
    device = None
    if instance_id is not None:
        device = Device(
            inventory_id=ref.inventory_id,
            study_id=ref.study_id,
            mode=ref.mode,
            instance_id=instance_id,
            connection_type=connection_type,
            vendor_code=vendor_code,
            registered=registered,
            dispensed_to=dispensed_to,
        )
    return DeviceFacts(
        study_mode_known=True,
        mhealth_configured=bool(mhealth_configured),
        subject_m_subject_id=m_subject_id,
        device=device,
    )


def replace_pair(
    conn: Connection, ref: DeviceRef, *, access_id: str, otp_hash: str, issued_at: datetime, expires_at: datetime
) -> None:
    """Make (access_id, otp_hash) the device's only pair, in one upsert. Raises IntegrityError on a taken access id."""
    values = {
        **_key(ref),
        "access_id": access_id,
        "otp_hash": otp_hash,
        "issued_at": issued_at,
        "expires_at": expires_at,
    }
    _REPLACE_PAIR[conn.dialect.name].execute(conn, values)


def _replace_pair(insert_: Any) -> PreparedStatement:
    fresh = {"used_at": None, "failed_attempts": 0, "locked_at": None}
    stmt = insert_(credentials).values(
        **{name: bindparam(name) for name in ("study_id", "mode", "inventory_id", "access_id", "otp_hash")},
        issued_at=bindparam("issued_at", type_=UTCDateTime),
        expires_at=bindparam("expires_at", type_=UTCDateTime),
        **fresh,
    )
    replaced = {name: stmt.excluded[name] for name in ("access_id", "otp_hash", "issued_at", "expires_at")}
    return PreparedStatement(
        stmt.on_conflict_do_update(
            index_elements=[credentials.c.study_id, credentials.c.mode, credentials.c.inventory_id],
            set_={**replaced, **fresh},
        )
    )


# Built once per dialect: constructing a statement costs more than running it on SQLite.
_REPLACE_PAIR = {"postgresql": _replace_pair(pg_insert), "sqlite": _replace_pair(sqlite_insert)}
_FIND_PAIR = select(credentials).where(credentials.c.access_id == bindparam("access_id"))


def find_pair(conn: Connection, access_id: str) -> StoredPair | None:
    row = conn.execute(_FIND_PAIR, {"access_id": access_id}).first()
    return None if row is None else StoredPair(**row._mapping)


def reserve_guess(conn: Connection, access_id: str, now: datetime, lockout: int) -> StoredPair | None:
    """Count one guess against a live pair before its OTP is checked, in one conditional update:
    None when there is no such pair, or it is spent, locked, expired or out of guesses. At most
    `lockout` guesses are ever checked against a pair, however many arrive at once."""
    row = conn.execute(
        update(credentials)
        .where(
            credentials.c.access_id == access_id,
            credentials.c.used_at.is_(None),
            credentials.c.locked_at.is_(None),
            credentials.c.expires_at > now,
            credentials.c.failed_attempts < lockout,
        )
        .values(failed_attempts=credentials.c.failed_attempts + 1)
        .returning(*credentials.c)
    ).first()
    return None if row is None else StoredPair(**row._mapping)


def spend(conn: Connection, pair: StoredPair, now: datetime) -> bool:
    """Spend a pair whose OTP was right (and give its guess back): true only for the one caller
    whose update found it unused and unlocked."""
    result = conn.execute(
        update(credentials)
        .where(
            credentials.c.access_id == pair.access_id,
            credentials.c.otp_hash == pair.otp_hash,
            credentials.c.used_at.is_(None),
            credentials.c.locked_at.is_(None),
        )
        .values(used_at=now, failed_attempts=credentials.c.failed_attempts - 1)
    )
    return result.rowcount == 1


def lock_if_out_of_guesses(conn: Connection, pair: StoredPair, now: datetime, lockout: int) -> bool:
    """After a wrong guess: lock the pair once its guesses are used up. True when it is locked now."""
    this_pair = (credentials.c.access_id == pair.access_id, credentials.c.otp_hash == pair.otp_hash)
    conn.execute(
        update(credentials)
        .where(*this_pair, credentials.c.failed_attempts >= lockout, credentials.c.locked_at.is_(None))
        .values(locked_at=now)
    )
    locked = conn.execute(select(credentials.c.locked_at).where(*this_pair)).scalar()
    return locked is not None


def instance_id(conn: Connection, pair: StoredPair) -> str:
    query = select(devices.c.instance_id).where(
        devices.c.study_id == pair.study_id,
        devices.c.mode == pair.mode,
        devices.c.inventory_id == pair.inventory_id,
    )
    instance_id: str = (conn.execute(query)).scalar_one()
    return instance_id


async def seed(store: Store, registry: Registry, progress: Callable[[int], None] | None = None) -> None:
    """Upsert a registry in one transaction: all of it or, on any error, none of it."""
    async with store.transaction() as conn:
        await conn.run_sync(upsert_registry, registry, progress)


async def store_is_empty(store: Store) -> bool:
    return await store.read(is_empty)


def is_empty(conn: Connection) -> bool:
    return (conn.execute(select(func.count()).select_from(study_modes))).scalar_one() == 0


def upsert_registry(conn: Connection, registry: Registry, progress: Callable[[int], None] | None = None) -> None:
    """Insert or update every entry; raise `RegistryError` (and so roll back) on a dangling reference.
    `progress` is told of every batch of rows written."""
    _check_references(conn, registry)
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
    _upsert(conn, study_modes, ("study_id", "mode"), mode_rows, progress)
    _upsert(conn, subjects, ("study_id", "mode", "subject_id"), subject_rows, progress)
    _upsert(conn, devices, ("study_id", "mode", "inventory_id"), device_rows, progress)


SEED_BATCH = 2000
"""Rows per `INSERT … ON CONFLICT DO UPDATE` when a registry is seeded."""


def _upsert(
    conn: Connection,
    table: Table,
    key: tuple[str, ...],
    rows: list[dict[str, Any]],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Insert or update `rows` by `key`: the dialect's `INSERT … ON CONFLICT DO UPDATE`, in batches."""
    if not rows:
        return
    insert_ = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = insert_(table)
    upsert = stmt.on_conflict_do_update(
        index_elements=[table.c[name] for name in key],
        set_={name: stmt.excluded[name] for name in rows[0] if name not in key},
    )
    for start in range(0, len(rows), SEED_BATCH):
        batch = rows[start : start + SEED_BATCH]
        conn.execute(upsert, batch)
        if progress is not None:
            progress(len(batch))


def _check_references(conn: Connection, registry: Registry) -> None:
    known_modes: set[tuple[Any, ...]] = set(registry.study_modes())
    known_subjects: set[tuple[Any, ...]] = set(registry.subject_keys())
    for index, subject in enumerate(registry.subjects):
        if not _known(conn, known_modes, study_modes, study_id=subject.study_id, mode=subject.mode):
            raise RegistryError(
                f"subjects[{index}] (id {subject.id}).studyId: study {subject.study_id} "
                f"has no mode {subject.mode.value} in the file or the store"
            )
    for index, device in enumerate(registry.devices):
        where = f"devices[{index}] (inventoryId {device.inventory_id})"
        if not _known(conn, known_modes, study_modes, study_id=device.study_id, mode=device.mode):
            raise RegistryError(
                f"{where}.studyId: study {device.study_id} has no mode {device.mode.value} in the file or the store"
            )
        if device.dispensed_to is not None and not _known(
            conn, known_subjects, subjects, study_id=device.study_id, mode=device.mode, subject_id=device.dispensed_to
        ):
            raise RegistryError(
                f"{where}.dispensedTo: subject {device.dispensed_to} is not in study {device.study_id} "
                f"({device.mode.value}) in the file or the store"
            )


def _known(conn: Connection, known: set[tuple[Any, ...]], table: Table, **key: Any) -> bool:
    """Is this key (columns in the order given) in the file's `known` keys or in `table`?"""
    values = tuple(key.values())
    if values in known:
        return True
    query = select(*table.primary_key.columns).where(*(table.c[name] == value for name, value in key.items()))
    found = (conn.execute(query)).first() is not None
    if found:
        known.add(values)
    return found
