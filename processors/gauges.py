"""The worker's gauges that are read rather than counted: lag per partition, dead letters,
the regroup queue.

Refreshed by a timer of the worker (only when it serves /metrics), never on the batch path:
per batch the runner only notes the first record of each partition (`HeadCache.note`).
Each refresh reads the checkpoints (one row per partition) and the log ends; the open dead
letters and the regroup queue every `letters_every_s`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from psycopg_pool import AsyncConnectionPool

from projections import backlog

from .lag import HeadCache, HeadReader, seconds_behind
from .metrics import WorkerMetrics

__all__ = ["FoldGauges"]

log = logging.getLogger(__name__)


class FoldGauges:
    def __init__(
        self,
        topic: str,
        pool: AsyncConnectionPool,
        metrics: WorkerMetrics,
        heads: HeadCache,
        reader: HeadReader,
        *,
        letters_every_s: float = 5.0,
    ) -> None:
        self.topic = topic
        self.pool = pool
        self.metrics = metrics
        self.heads = heads
        self.reader = reader
        self.letters_every_s = letters_every_s
        self._letters_at = 0.0

    async def refresh(self, ends: Mapping[int, int]) -> dict[int, tuple[int, float]]:
        """Set the lag gauges of the partitions in `ends` (the ones this worker owns, with
        their log ends) and, now and then, the dead-letter gauges. Returns the lag."""
        async with self.pool.connection() as conn:
            active, points = await backlog.checkpoints(conn, self.topic)
            if time.monotonic() - self._letters_at >= self.letters_every_s:
                letters = await backlog.open_letters(conn, active)
                for state, n in letters.by_state.items():
                    self.metrics.dead_letters.labels(state).set(n)
                self.metrics.parked_customers.set(letters.customers)
                queued = await backlog.regroup_queue(conn, active)
                self.metrics.regroup_queue.set(queued.customers)
                self.metrics.regroup_queue_age.set(queued.oldest_s)
                self._letters_at = time.monotonic()
        lag = await self.lag(ends, points)
        self.metrics.set_lag(lag)
        return lag

    async def lag(
        self, ends: Mapping[int, int], points: Mapping[int, int]
    ) -> dict[int, tuple[int, float]]:
        behind = {p: points.get(p, 0) for p, end in ends.items() if end > points.get(p, 0)}
        unknown = {p: o for p, o in behind.items() if not self.heads.get(p, o)[0]}
        if unknown:
            for p, value in (await self.reader.read(unknown)).items():
                if value is not None:  # not readable this time: try again next refresh
                    self.heads.put(p, unknown[p], value)
        now = time.time()
        out: dict[int, tuple[int, float]] = {}
        for p, end in ends.items():
            offset = points.get(p, 0)
            _, head = self.heads.get(p, offset)
            out[p] = (
                max(0, end - offset),
                seconds_behind(head, caught_up=p not in behind, now=now),
            )
        return out
