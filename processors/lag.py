"""How far the fold is behind the log: per partition, in events and in seconds.

Lag in events is the log end minus the Postgres checkpoint (the next offset to fold). Lag in
seconds is the age of the oldest event not folded yet: now minus the `received-at` header (the
time ingest took it, `ingest.keys.event_headers`) of the record at the checkpoint; 0 when the
checkpoint is at the log end. Both the worker's gauges and `entitled status` use it.

The worker learns most heads for free: a batch starts at the checkpoint, and its first record
carries the header (`HeadCache.note`). Only a head that no batch has shown yet (the worker is
between batches, or has just been assigned a partition) is read from Kafka with a consumer of
its own (`HeadReader`), once per head.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from entitled.kafka import client_options
from entitled.settings import Settings
from projections.types import Message

__all__ = ["RECEIVED_AT", "HeadCache", "HeadReader", "received_at", "seconds_behind"]

RECEIVED_AT = "received-at"


def received_at(headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None) -> float | None:
    """The `received-at` header as Unix seconds (None: absent or not a number)."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        if name == RECEIVED_AT:
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None


def seconds_behind(head_received_at: float | None, *, caught_up: bool, now: float) -> float:
    """Age of the oldest unfolded event: 0 when caught up (or its time is unknown)."""
    if caught_up or head_received_at is None:
        return 0.0
    return max(0.0, now - head_received_at)


class HeadCache:
    """Per partition, the received-at of one record the worker has seen: (offset, seconds)."""

    def __init__(self) -> None:
        self._heads: dict[int, tuple[int, float | None]] = {}

    def note(self, batch: Sequence[Message]) -> None:
        """Remember the first record of each partition in `batch` (one dict write each)."""
        first: dict[int, Message] = {}
        for m in batch:
            if m.partition not in first:
                first[m.partition] = m
        for p, m in first.items():
            self._heads[p] = (m.offset, m.received_at)

    def put(self, partition: int, offset: int, value: float | None) -> None:
        self._heads[partition] = (offset, value)

    def get(self, partition: int, offset: int) -> tuple[bool, float | None]:
        """(known, received-at) of the record at `offset` of `partition`."""
        head = self._heads.get(partition)
        if head is None or head[0] != offset:
            return False, None
        return True, head[1]


class HeadReader:
    """Reads the `received-at` of the record at given offsets with its own consumer (no group,
    nothing committed). Partitions are paused between reads so that nothing is prefetched."""

    def __init__(self, settings: Settings, topic: str, *, timeout_s: float = 5.0) -> None:
        self.settings = settings
        self.topic = topic
        self.timeout_s = timeout_s
        self._consumer: AIOKafkaConsumer | None = None

    async def _open(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **client_options(self.settings),
                enable_auto_commit=False,
                auto_offset_reset="none",
                # one record is all we want; a larger one still comes whole (KIP-74)
                max_partition_fetch_bytes=64 * 1024,
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def read(self, positions: Mapping[int, int]) -> dict[int, float | None]:
        """partition -> received-at of the record at its offset (None when not readable in
        time, e.g. the offset is the log end)."""
        if not positions:
            return {}
        consumer = await self._open()
        tps = {p: TopicPartition(self.topic, p) for p in positions}
        consumer.assign(list(tps.values()))
        for p, tp in tps.items():
            consumer.seek(tp, positions[p])
        consumer.resume(*tps.values())
        out: dict[int, float | None] = {}
        deadline = time.monotonic() + self.timeout_s
        try:
            while len(out) < len(tps) and time.monotonic() < deadline:
                wanted = [tp for p, tp in tps.items() if p not in out]
                batches = await consumer.getmany(*wanted, timeout_ms=200, max_records=len(tps))
                for tp, records in batches.items():
                    # The first record at or after the offset: an offset with no record (an
                    # aborted transaction's) is followed by the oldest record left to fold.
                    if records and tp.partition not in out:
                        out[tp.partition] = received_at(_headers(records[0].headers))
        finally:
            consumer.pause(*tps.values())
        return {p: out.get(p) for p in positions}

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), 10)


def _headers(raw: Any) -> list[tuple[str, bytes]]:
    return [(k, v) for k, v in raw or () if isinstance(k, str)]
