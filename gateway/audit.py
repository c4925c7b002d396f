"""The audit trail: one append-only, MAC-chained row per attempt (21 CFR Part 11 §11.10(e)).

Each row holds when (UTC), what (action and outcome), who (the token's subject and client) and on
what (study, mode, subject, device, the access ID issued or presented), with the request id.
Never an OTP, a token or an Authorization header. `hash` is HMAC-SHA256, keyed with a key kept
outside the database (`GATEWAY_AUDIT_KEY_FILE`), over the previous row's `hash` and this row's
canonical JSON: changing, removing or reordering any row breaks every link after it, and without
the key nobody can recompute the chain. Cutting the end off (and moving the head back) leaves a
whole chain; a head recorded elsewhere (`gateway audit head`, `verify --expect-head`) catches it.

Rows are written in the attempt's own unit of work (`append`), so they commit together with what
the attempt changed, or not at all. The trail is a participant of the store's group commit: each
batch first locks the single `audit_head` row (SQLite: the write lock `BEGIN IMMEDIATE` already
holds), which lines batches up across processes, and at its end the batch's rows are chained and
inserted in one statement. Reading (`verify`, `export`, `head`) happens in one snapshot that never
blocks a writer, so a live gateway can be verified.

An attempt whose outcome is decided elsewhere (upstream mode) is recorded twice: a `PENDING` row,
durable before the upstream call, and its outcome row after it, pointing back with `attempt_seq`.
A `PENDING` row that no outcome row points to (the process died during the call) is an attempt
whose outcome is unknown: `verify` lists them and the export shows them as `OUTCOME_UNKNOWN`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import BigInteger, Column, Connection, Integer, String, Table, bindparam, event, insert, select, update

from gateway.keyfiles import private_file
from gateway.settings import Settings, SettingsError
from gateway.store import PreparedStatement, Store, UnitOfWork, UTCDateTime, metadata

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_MAX_TEXT = 100
PENDING = "PENDING"
"""The outcome of an attempt's first row when its outcome is decided after it (an upstream call)."""
OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
"""How a `PENDING` attempt that never got its outcome row is shown."""

# One row per attempt (two for an upstream attempt), never updated or deleted.
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
    Column("access_id", String(100), nullable=True),
    Column("attempt_seq", BigInteger, nullable=True),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# The chain's head: one row, locked by each batch so that batches from every process line up.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

TABLES = (audit_events, audit_head)


@event.listens_for(audit_head, "after_create")
def _genesis(target: Table, connection: Connection, **_: object) -> None:
    """The head exists with its table: no batch ever races to create it."""
    connection.execute(insert(target).values(id=1, seq=0, hash=GENESIS))


def clip(value: str | None) -> str | None:
    """Input as it came, made safe to keep: printable, at most 100 characters."""
    if value is None:
        return None
    printable = "".join(ch if ch.isprintable() else "\N{REPLACEMENT CHARACTER}" for ch in value)
    return printable[:_MAX_TEXT]


@dataclass(frozen=True)
class AuditEvent:
    """What happened, before it has a place in the chain."""

    at: datetime
    action: str
    """`regenerate` or `bootstrap`."""
    outcome: str
    """`SUCCESS`, an `ErrorCode` value, or a bootstrap outcome such as `WRONG_OTP`."""
    request_id: str
    caller: str | None = None
    client_id: str | None = None
    study_id: str | None = None
    mode: str | None = None
    subject_id: str | None = None
    inventory_id: str | None = None
    access_id: str | None = None
    """The access ID issued (a successful regeneration) or presented (a bootstrap); never the OTP."""
    attempt_seq: int | None = None
    """On an outcome row recorded after an upstream call: the seq of the attempt's `PENDING` row."""

    def summary(self) -> str:
        """The event for a log line: what, when and by whom, without the study, subject, device or
        access ID (those belong in the trail, not in logs)."""
        return (
            f"{self.action} {self.outcome} at {self.at.isoformat()} caller={self.caller} "
            f"client={self.client_id} attempt_seq={self.attempt_seq}"
        )


@dataclass
class Receipt:
    """Where an appended event landed in the chain: `seq` is set when its batch is written."""

    event: AuditEvent
    seq: int = 0


@dataclass(frozen=True)
class AuditRecord(AuditEvent):
    """An event in the chain."""

    seq: int = 0
    prev_hash: str = GENESIS
    hash: str = GENESIS

    def to_json(self) -> dict[str, object]:
        data = dict(vars(self))
        data["at"] = self.at.isoformat()
        return data


_EVENT_FIELDS = tuple(field.name for field in fields(AuditEvent))


def _fields(event: AuditEvent) -> dict[str, Any]:
    """The event's own fields (of a record too), flat: `asdict` would deep-copy every value."""
    return {name: getattr(event, name) for name in _EVENT_FIELDS}


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)
"""A row's canonical JSON (made once: `json.dumps` with options makes an encoder per call)."""


def link_hash(key: bytes, prev_hash: str, seq: int, event: AuditEvent) -> str:
    """The row's link: HMAC-SHA256, keyed with the trail's key, over the previous link and the
    row's canonical JSON. Without the key nobody can forge a row or recompute the chain."""
    body = _fields(event)
    body["at"] = event.at.isoformat()
    body["seq"] = seq
    canonical = _CANONICAL.encode(body)
    return hmac.new(key, f"{prev_hash}\n{canonical}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Head:
    """Where the chain ends: `SEQ:MAC`, to be recorded outside the gateway (`gateway audit head`)."""

    seq: int
    mac: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.mac}"

    @classmethod
    def parse(cls, text: str) -> Head:
        seq, colon, mac = text.partition(":")
        if not colon or not seq.isdigit() or len(mac) != 64 or any(c not in "0123456789abcdef" for c in mac):
            raise ValueError("a head is SEQ:MAC, as `gateway audit head` prints it")
        return cls(int(seq), mac)


@dataclass(frozen=True)
class Verdict:
    """What `verify` found: the rows checked, the first broken row and why (None: intact), the
    attempts whose outcome is unknown."""

    rows: int
    broken_at: int | None = None
    problem: str | None = None
    unknown_outcomes: tuple[int, ...] = ()

    @property
    def broken(self) -> tuple[int, str] | None:
        """(the first broken row, what is wrong), or None when intact."""
        return None if self.broken_at is None or self.problem is None else (self.broken_at, self.problem)


KEY_FILE = "audit-key"
"""The development key's file name in the data folder."""
KEY_BYTES = 32


def audit_key(settings: Settings) -> bytes:
    """The trail's MAC key: `GATEWAY_AUDIT_KEY_FILE`, else (refused in production) a random key
    made once in the data folder, mode 0600. Raises `SettingsError` naming the variable."""
    if settings.production and not settings.audit_key_file:
        raise SettingsError(
            "GATEWAY_AUDIT_KEY_FILE is required when GATEWAY_PRODUCTION=true: the audit trail's MAC key "
            "must be kept outside the database and its data folder"
        )
    path = Path(settings.audit_key_file) if settings.audit_key_file else Path(settings.data_dir) / KEY_FILE
    if not settings.audit_key_file:
        private_file(path, lambda: secrets.token_hex(KEY_BYTES))
    try:
        key = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError) as error:
        raise SettingsError(f"GATEWAY_AUDIT_KEY_FILE: {path} must hold a hexadecimal key ({error})") from None
    if len(key) < KEY_BYTES:
        raise SettingsError(f"GATEWAY_AUDIT_KEY_FILE: {path} holds a key shorter than {KEY_BYTES} bytes")
    return key


class AuditTrail:
    """The trail in a store: a participant of its group commit (`append` defers rows to `flush`)."""

    def __init__(self, store: Store, key: bytes) -> None:
        self.store = store
        self.key = key
        store.join(self)

    def append(self, work: UnitOfWork, event: AuditEvent) -> Receipt:
        """Add `event` to the trail in `work`'s batch: committed with the unit's other writes, or not at all."""
        receipt = Receipt(event)
        work.defer(self, receipt)
        return receipt

    def begin_batch(self, connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            connection.execute(_LOCK_HEAD)

    def flush(self, connection: Connection, items: Sequence[object]) -> None:
        [(seq, prev_hash)] = _HEAD.rows(connection)
        rows: list[dict[str, object]] = []
        for item in items:
            assert isinstance(item, Receipt)
            seq += 1
            digest = link_hash(self.key, prev_hash, seq, item.event)
            rows.append({**_fields(item.event), "seq": seq, "prev_hash": prev_hash, "hash": digest})
            item.seq, prev_hash = seq, digest
        _INSERT.execute_many(connection, rows)
        _MOVE_HEAD.execute(connection, {"new_seq": seq, "new_hash": prev_hash})

    async def records(self) -> list[AuditRecord]:
        """Every row in chain order, each an attempt's `PENDING` row too (one snapshot)."""
        return await self.store.snapshot(lambda conn: list(_records(conn)))

    async def attempts(self) -> list[AuditRecord]:
        """Each attempt once, in chain order: by its outcome row (a resolved `PENDING` row is left
        out), or, for a `PENDING` row that was never resolved, that row with `OUTCOME_UNKNOWN`."""

        def read(conn: Connection) -> list[AuditRecord]:
            unknown = set(_unresolved(conn))
            return [
                replace(record, outcome=OUTCOME_UNKNOWN) if record.seq in unknown else record
                for record in _records(conn)
                if record.outcome != PENDING or record.seq in unknown
            ]

        return await self.store.snapshot(read)

    async def head(self) -> Head:
        """Where the chain ends now."""
        return await self.store.snapshot(_head)

    async def verify(self, expect_head: Head | None = None) -> Verdict:
        """Check every link, in one consistent snapshot that never blocks a writer (a live gateway
        goes on meanwhile). With `expect_head` (recorded earlier), also that the chain still
        reaches it: a trail cut short and its head moved back fails here."""
        return await self.store.snapshot(lambda conn: self._verify(conn, expect_head))

    def _verify(self, conn: Connection, expect_head: Head | None) -> Verdict:
        prev_hash, seq = GENESIS, 0
        reached = expect_head is None or expect_head == Head(0, GENESIS)
        for record in _records(conn):
            if record.seq != seq + 1:
                return Verdict(seq, record.seq, f"row {seq + 1} is missing (found {record.seq})")
            if record.prev_hash != prev_hash:
                return Verdict(seq, record.seq, "does not link to the row before it")
            if link_hash(self.key, prev_hash, record.seq, record) != record.hash:
                return Verdict(seq, record.seq, "its contents do not match its hash")
            prev_hash, seq = record.hash, record.seq
            reached = reached or Head(seq, prev_hash) == expect_head
        head = _head(conn)
        if (head.seq, head.mac) != (seq, prev_hash):
            return Verdict(
                seq, seq + 1, f"the chain ends at row {seq} but its head says row {head.seq}: rows were removed"
            )
        if not reached:
            assert expect_head is not None
            return Verdict(
                seq, expect_head.seq, f"the trail no longer reaches the recorded head {expect_head}: it was cut short"
            )
        return Verdict(seq, unknown_outcomes=tuple(_unresolved(conn)))

    async def export(self, sink: TextIO) -> int:
        """Write every row as a JSON line (one snapshot); an unresolved `PENDING` row as
        `OUTCOME_UNKNOWN`, its stored outcome in `recorded_outcome`. Returns the rows written."""

        def write(conn: Connection) -> int:
            unknown = set(_unresolved(conn))
            count = 0
            for record in _records(conn):
                row = record.to_json()
                if record.seq in unknown:
                    row.update(outcome=OUTCOME_UNKNOWN, recorded_outcome=record.outcome)
                sink.write(json.dumps(row, sort_keys=True) + "\n")
                count += 1
            return count

        return await self.store.snapshot(write)


def _records(conn: Connection) -> Iterator[AuditRecord]:
    rows = conn.execute(select(audit_events).order_by(audit_events.c.seq).execution_options(yield_per=1000))
    for row in rows:
        yield AuditRecord(**row._mapping)


def _head(conn: Connection) -> Head:
    [(seq, mac)] = _HEAD.rows(conn)
    return Head(seq, mac)


def _unresolved(conn: Connection) -> list[int]:
    """The seqs of `PENDING` rows that no outcome row points to: attempts whose outcome is unknown."""
    outcome = audit_events.alias("outcome")
    resolved = select(outcome.c.attempt_seq).where(outcome.c.attempt_seq.is_not(None))
    query = (
        select(audit_events.c.seq)
        .where(audit_events.c.outcome == PENDING, audit_events.c.seq.not_in(resolved))
        .order_by(audit_events.c.seq)
    )
    return list(conn.execute(query).scalars())


# Built once (constructing a statement costs more than running it on SQLite), the batch's own
# statements prepared (see `gateway.store.PreparedStatement`).
_SELECT_HEAD = select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
_LOCK_HEAD = _SELECT_HEAD.with_for_update()
_HEAD = PreparedStatement(_SELECT_HEAD)
_INSERT = PreparedStatement(insert(audit_events))
_MOVE_HEAD = PreparedStatement(
    update(audit_head).where(audit_head.c.id == 1).values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)
