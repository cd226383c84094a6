"""The recent change feed in memory: fetched once per wake-up, shared by every event stream.

Without it, a change woke every open stream and each ran its own query: N streams, N queries
per change, all queueing for the pool (50 streams at 100 changes/s: p99 270 ms, mostly pool
waits). With it, the first stream to wake fetches what is new (one query, under a lock) and
the others read it from memory.

`Fanout` holds every change with `floor < id <= top`, in id order, at most about `keep` of
them. A cursor below `floor` (a client resuming from far back, or one that started before the
memory did) is not covered: `after` answers None and the stream reads the database, as
before, until it has caught up. Correctness rests on the feed's commit-order ids: `top` is
the head of the snapshot of the last fetch, so nothing at or below it can appear later.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from psycopg import AsyncConnection

from api.watcher import Signal
from projections import feed
from projections.feed import Change, Page

__all__ = ["Fanout"]

FETCH = 1000


class Fanout:
    """The process's recent changes; see the module doc."""

    def __init__(self, signal: Signal, keep: int = 10_000) -> None:
        self.signal = signal
        self.keep = keep
        self.recent: list[Change] = []
        self.floor: int | None = None  # None: nothing fetched yet
        self.top = 0
        self.fetches = 0
        self._fetched_for = -1  # the signal's `fired` count the last fetch began after
        self._lock = asyncio.Lock()

    async def refresh(
        self,
        connection: Callable[[], AbstractAsyncContextManager[AsyncConnection[Any]]],
        *,
        start: int | None = None,
        force: bool = False,
    ) -> None:
        """Fetch what is new, unless a fetch began after the signal's latest firing (then
        memory is already as fresh as this wake-up asks). `force`: fetch all the same (a
        wake-up by timeout, when the watcher cannot be trusted to fire). `start`: the
        caller's cursor, from which an empty memory begins (the caller has read everything
        up to it, so the memory covers it); without it an empty memory begins at the head."""
        async with self._lock:
            fired = self.signal.fired
            if self.floor is not None and not force and self._fetched_for >= fired:
                return
            self._fetched_for = fired
            self.fetches += 1
            async with connection() as conn:
                if self.floor is None:
                    self.floor = self.top = await feed.head(conn) if start is None else start
                while True:
                    page = await feed.page_after(conn, self.top, FETCH)
                    self.recent.extend(page.changes)
                    self.top = page.next
                    if len(page.changes) < FETCH:
                        break
            if len(self.recent) > 2 * self.keep:  # trim now and then, not on every fetch
                self.floor = self.recent[-self.keep - 1].id
                self.recent = self.recent[-self.keep :]

    def after(self, cursor: int, customer: str | None, limit: int) -> Page | None:
        """Up to `limit` changes after `cursor` (of one customer if given) from memory, or
        None when memory does not reach back to `cursor`."""
        if self.floor is None or cursor < self.floor:
            return None
        start = bisect.bisect_right(self.recent, cursor, key=lambda c: c.id)
        tail = self.recent[start:]
        if customer is not None:
            tail = [c for c in tail if c.customer == customer]
        if len(tail) > limit:
            return Page(tail[:limit], tail[limit - 1].id)
        return Page(tail, max(cursor, self.top))
