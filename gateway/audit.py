"""The audit trail: one append-only, hash-chained row per attempt (21 CFR Part 11 §11.10(e)).

Each row holds when (UTC), what (action and outcome), who (the token's subject and client) and on
what (study, mode, subject, device), with the request id. Never an OTP, a token or an
Authorization header. `hash` is SHA-256 over the previous row's hash and this row's canonical
JSON, so changing, removing or reordering any row breaks every link after it; `verify` finds the
first broken one. Appends from every process line up behind a lock on the single `audit_head`
row (SQLite: the write lock `BEGIN IMMEDIATE` takes).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.engine.store import Store, StoreTransaction, audit_events, audit_head

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_MAX_TEXT = 100


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


@dataclass(frozen=True)
class AuditRecord(AuditEvent):
    """An event in the chain."""

    seq: int = 0
    prev_hash: str = GENESIS
    hash: str = GENESIS

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["at"] = self.at.isoformat()
        return data


def link_hash(prev_hash: str, seq: int, event: AuditEvent) -> str:
    body = asdict(event)
    body["at"] = event.at.isoformat()
    body["seq"] = seq
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


async def append_in(tx: StoreTransaction, event: AuditEvent) -> AuditRecord:
    """Append inside an open transaction (so an engine change and its row commit together)."""
    conn = tx.connection
    head = (await conn.execute(select(audit_head).where(audit_head.c.id == 1).with_for_update())).first()
    if head is None:
        # First row ever. Two processes racing here collide on the primary key; the loser retries.
        await conn.execute(insert(audit_head).values(id=1, seq=0, hash=GENESIS))
        seq, prev_hash = 1, GENESIS
    else:
        seq, prev_hash = head.seq + 1, head.hash
    digest = link_hash(prev_hash, seq, event)
    record = AuditRecord(**asdict(event), seq=seq, prev_hash=prev_hash, hash=digest)
    await conn.execute(insert(audit_events).values(**asdict(record)))
    await conn.execute(update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=digest))
    return record


class AuditTrail:
    """The trail in a store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def append(self, event: AuditEvent) -> AuditRecord:
        try:
            async with self.store.transaction() as tx:
                return await append_in(tx, event)
        except IntegrityError:
            # Another process wrote the very first head row at the same moment: it exists now.
            async with self.store.transaction() as tx:
                return await append_in(tx, event)

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
                event = AuditEvent(**{k: v for k, v in asdict(record).items() if k not in {"seq", "prev_hash", "hash"}})
                if link_hash(prev_hash, record.seq, event) != record.hash:
                    return record.seq, "its contents do not match its hash"
                prev_hash, expected_seq = record.hash, expected_seq + 1
        async with self.store.transaction() as tx:
            head = (await tx.connection.execute(select(audit_head))).first()
        last = expected_seq - 1
        if head is not None and (head.seq, head.hash) != (last, prev_hash):
            return last + 1, f"the chain ends at row {last} but its head says row {head.seq}: rows were removed"
        return last, None
