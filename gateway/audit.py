"""The audit trail: one append-only, hash-chained row per attempt (21 CFR Part 11 §11.10(e)).

Each row holds when (UTC), what (action and outcome), who (the token's subject and client) and on
what (study, mode, subject, device), with the request id. Never an OTP, a token or an
Authorization header. `hash` is SHA-256 over the previous row's hash and this row's canonical
JSON, so changing, removing or reordering any row breaks every link after it; `verify` finds the
first broken one.

Rows are written in the attempt's own unit of work (`append`), so they commit together with what
the attempt changed, or not at all. The trail is a participant of the store's group commit: each
batch first locks the single `audit_head` row (SQLite: the write lock `BEGIN IMMEDIATE` already
holds), which lines batches up across processes, and at its end the batch's rows are chained and
inserted in one statement.

An attempt whose outcome is decided elsewhere (upstream mode) is recorded twice: a `PENDING` row,
durable before the upstream call, and its outcome row after it, pointing back with `attempt_seq`.
A `PENDING` row that no outcome row points to (the process died during the call) is an attempt
whose outcome is unknown: `unresolved` lists them and the export shows them as `OUTCOME_UNKNOWN`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Connection, Integer, String, Table, bindparam, event, insert, select, update

from gateway.store import Store, UnitOfWork, UTCDateTime, metadata

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


def link_hash(prev_hash: str, seq: int, event: AuditEvent) -> str:
    body = _fields(event)
    body["at"] = event.at.isoformat()
    body["seq"] = seq
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


class AuditTrail:
    """The trail in a store: a participant of its group commit (`append` defers rows to `flush`)."""

    def __init__(self, store: Store) -> None:
        self.store = store
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
        seq, prev_hash = connection.execute(_HEAD).one()
        rows: list[dict[str, object]] = []
        for item in items:
            assert isinstance(item, Receipt)
            seq += 1
            digest = link_hash(prev_hash, seq, item.event)
            rows.append({**_fields(item.event), "seq": seq, "prev_hash": prev_hash, "hash": digest})
            item.seq, prev_hash = seq, digest
        connection.execute(_INSERT, rows)
        connection.execute(_MOVE_HEAD, {"new_seq": seq, "new_hash": prev_hash})

    async def records(self) -> AsyncGenerator[AuditRecord, None]:
        """Every row in chain order, streamed."""
        async with self.store.engine.connect() as conn:
            result = await conn.stream(select(audit_events).order_by(audit_events.c.seq))
            async for row in result:
                yield AuditRecord(**row._mapping)

    async def verify(self) -> tuple[int, str | None]:
        """(rows checked, None) when intact, else (seq of the first broken row, what is wrong)."""
        prev_hash, expected_seq = GENESIS, 1
        async with aclosing(self.records()) as records:
            async for record in records:
                if record.seq != expected_seq:
                    return record.seq, f"row {expected_seq} is missing (found {record.seq})"
                if record.prev_hash != prev_hash:
                    return record.seq, "does not link to the row before it"
                event = AuditEvent(**_fields(record))
                if link_hash(prev_hash, record.seq, event) != record.hash:
                    return record.seq, "its contents do not match its hash"
                prev_hash, expected_seq = record.hash, expected_seq + 1
        async with self.store.engine.connect() as conn:
            head = (await conn.execute(select(audit_head))).first()
        last = expected_seq - 1
        if head is not None and (head.seq, head.hash) != (last, prev_hash):
            return last + 1, f"the chain ends at row {last} but its head says row {head.seq}: rows were removed"
        return last, None

    async def attempts(self) -> AsyncGenerator[AuditRecord, None]:
        """Each attempt once, in chain order: by its outcome row (a resolved `PENDING` row is left
        out), or, for a `PENDING` row that was never resolved, that row with `OUTCOME_UNKNOWN`."""
        unresolved = set(await self.unresolved())
        async with aclosing(self.records()) as records:
            async for record in records:
                if record.outcome != PENDING:
                    yield record
                elif record.seq in unresolved:
                    yield replace(record, outcome=OUTCOME_UNKNOWN)

    async def unresolved(self) -> list[int]:
        """The seqs of `PENDING` rows that no outcome row points to: attempts whose outcome is unknown."""
        outcome = audit_events.alias("outcome")
        resolved = select(outcome.c.attempt_seq).where(outcome.c.attempt_seq.is_not(None))
        query = (
            select(audit_events.c.seq)
            .where(audit_events.c.outcome == PENDING, audit_events.c.seq.not_in(resolved))
            .order_by(audit_events.c.seq)
        )
        async with self.store.engine.connect() as conn:
            return list((await conn.execute(query)).scalars())


# Built once: constructing a statement costs more than running it on SQLite.
_HEAD = select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)
_LOCK_HEAD = _HEAD.with_for_update()
_INSERT = insert(audit_events)
_MOVE_HEAD = update(audit_head).where(audit_head.c.id == 1).values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
