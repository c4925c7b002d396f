"""Rate limits on regeneration, per device and per caller, kept in the store with their table.

Fixed windows: a counter row per key holds the window's start and the attempts in it. A hit is
one upsert (`INSERT … ON CONFLICT DO UPDATE … RETURNING`) inside the attempt's unit of work, so
the count commits with the attempt or not at all, and every process sharing the store counts
into the same row: the limits hold across replicas.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Column, ColumnElement, Connection, Integer, String, Table, and_, bindparam, case, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from gateway.store import PreparedStatement, Store, UTCDateTime, metadata

# Fixed-window counters: one row per limited key (a device, a caller).
rate_counters = Table(
    "rate_counters",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("window_start", UTCDateTime, nullable=False),
    Column("count", Integer, nullable=False),
)

TABLES = (rate_counters,)


def _over(counter: str) -> ColumnElement[bool]:
    """The counter `counter` (a parameter) if its window is still open and one more attempt would exceed it."""
    return and_(
        rate_counters.c.key == bindparam(counter),
        rate_counters.c.window_start > bindparam(f"{counter}_cutoff", type_=UTCDateTime),
        rate_counters.c.count >= bindparam(f"{counter}_attempts"),
    )


_PEEK = PreparedStatement(
    select(rate_counters.c.key, rate_counters.c.count, rate_counters.c.window_start).where(
        or_(_over("first"), _over("second"))
    )
)
"""Of two counters (an attempt's device and caller, each a point lookup by its key), those that
would refuse one more attempt now: almost always none, so nothing to convert."""


@dataclass(frozen=True)
class Exceeded:
    """An attempt over its limit."""

    retry_after: int
    """Seconds until the window ends."""
    first: bool
    """The first attempt over the limit in this window (a flood's later ones need no record of their own)."""


@dataclass(frozen=True)
class Limit:
    """At most `attempts` per `window`, for keys with this prefix (`device`, `caller`)."""

    prefix: str
    attempts: int
    window: timedelta

    def key(self, key: str) -> str:
        """The counter's key: the prefix and a hash of `key`, so that no two keys share a budget
        however long they are (a token's `sub`, an access ID as a device sent it)."""
        return f"{self.prefix}:{hashlib.sha256(key.encode()).hexdigest()}"


class RateLimiter:
    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.clock = clock
        insert = pg_insert if store.dialect == "postgresql" else sqlite_insert
        now = bindparam("now", type_=UTCDateTime)
        stmt = insert(rate_counters).values(key=bindparam("key"), window_start=now, count=1)
        # A window that has ended starts again at this attempt.
        ended = rate_counters.c.window_start <= bindparam("cutoff", type_=UTCDateTime)
        self._hit = PreparedStatement(
            stmt.on_conflict_do_update(
                index_elements=[rate_counters.c.key],
                set_={
                    "count": case((ended, 1), else_=rate_counters.c.count + 1),
                    "window_start": case((ended, now), else_=rate_counters.c.window_start),
                },
            ).returning(rate_counters.c.count, rate_counters.c.window_start)
        )

    def hit(self, connection: Connection, limit: Limit, key: str) -> Exceeded | None:
        """Count one attempt; None when it is within the limit."""
        if limit.attempts <= 0:
            return None
        now = self.clock()
        params = {"key": limit.key(key), "now": now, "cutoff": now - limit.window}
        [(count, window_start)] = self._hit.rows(connection, params)
        retry_after = _retry_after(limit, count, window_start, now)
        return None if retry_after is None else Exceeded(retry_after, first=count == limit.attempts + 1)

    def peek(self, connection: Connection, hits: Sequence[tuple[Limit, str]]) -> int | None:
        """What counting `hits` (at most two: a device's and a caller's) would answer now (the
        longest wait, or None), counting nothing: one query."""
        limits = {limit.key(key): limit for limit, key in hits if limit.attempts > 0}
        if not limits:
            return None
        if len(limits) > 2:
            raise ValueError("peek reads at most two counters")
        now = self.clock()
        params: dict[str, object] = {"second": None, "second_cutoff": None, "second_attempts": None}
        for name, (key, limit) in zip(("first", "second"), limits.items(), strict=False):
            params.update({name: key, f"{name}_cutoff": now - limit.window, f"{name}_attempts": limit.attempts})
        waits = [
            _retry_after(limits[key], count + 1, window_start, now)
            for key, count, window_start in _PEEK.rows(connection, params)
        ]
        return max((wait for wait in waits if wait is not None), default=None)


def _retry_after(limit: Limit, count: int, window_start: datetime, now: datetime) -> int | None:
    if count <= limit.attempts:
        return None
    remaining = (window_start + limit.window - now).total_seconds()
    return max(1, math.ceil(remaining))
