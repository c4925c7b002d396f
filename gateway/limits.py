"""Rate limits on regeneration, per device and per caller, kept in the store.

Fixed windows: a counter row per key holds the window's start and the attempts in it. The
increment is one UPDATE, so every process sharing the store counts into the same row and the
limits hold across replicas.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.engine.store import Store, rate_counters


@dataclass(frozen=True)
class Limit:
    """At most `attempts` per `window`, for keys with this prefix (`device`, `caller`)."""

    prefix: str
    attempts: int
    window: timedelta


class RateLimiter:
    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.clock = clock

    async def hit(self, limit: Limit, key: str) -> int | None:
        """Count one attempt; None when it is within the limit, else the seconds until the window ends."""
        if limit.attempts <= 0:
            return None
        now = self.clock()
        row_key = f"{limit.prefix}:{key}"[:255]
        try:
            count, window_start = await self._count(row_key, now, limit.window)
        except IntegrityError:
            # Two processes created this key's first row at once: it exists now; count into it.
            count, window_start = await self._count(row_key, now, limit.window)
        if count <= limit.attempts:
            return None
        remaining = (window_start + limit.window - now).total_seconds()
        return max(1, math.ceil(remaining))

    async def _count(self, key: str, now: datetime, window: timedelta) -> tuple[int, datetime]:
        async with self.store.transaction() as tx:
            conn = tx.connection
            this = rate_counters.c.key == key
            # A window that has ended starts again at this attempt.
            await conn.execute(
                update(rate_counters)
                .where(this, rate_counters.c.window_start <= now - window)
                .values(window_start=now, count=0)
            )
            result = await conn.execute(update(rate_counters).where(this).values(count=rate_counters.c.count + 1))
            if result.rowcount == 0:
                await conn.execute(insert(rate_counters).values(key=key, window_start=now, count=1))
                return 1, now
            query = select(rate_counters.c.count, rate_counters.c.window_start).where(this)
            count, window_start = (await conn.execute(query)).one()
            return count, window_start
