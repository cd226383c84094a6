"""Events to the log as one record batch per partition per round trip (`EventBatches`).

An idempotent producer keeps one batch per partition in flight: aiokafka mutes a partition
until its batch is acknowledged, and the events asked for meanwhile wait in that partition's
next batch. With `AIOKafkaProducer.send` each of them also pays a coroutine, a partition
lookup, a future of its own and a `RecordMetadata` when the batch is acknowledged. Here the
next batch is ours: `add` appends the record to it and hands back a future that the batch's
acknowledgement settles (one ack and one `RecordMetadata` per batch), and one flusher per
partition sends it (`send_batch`) once the batch before it is acknowledged. So a partition's
records keep their order, at most one of its batches is in flight, and the partition of a
key is the one `send` would choose (aiokafka's default partitioner over the topic's
partitions, as other writers and older versions chose it).

A record too large for a request is refused on its own (`MessageSizeTooLargeError`, as
`send` refuses it) before it joins a batch: one bad record never fails the others.
"""

from __future__ import annotations

import asyncio
import collections
import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import RecordMetadata

__all__ = ["EventBatches"]

Headers = Sequence[tuple[str, bytes]]
Written = tuple[int, int]  # partition, offset


@dataclass(slots=True)
class _Batch:
    """Records for one partition, written together. `waiters[i]` resolves to where record i
    was written (a future per caller: one that gives up cancels its own only); `outcome` to None
    once the batch is acknowledged, or its error, whoever still waits."""

    outcome: asyncio.Future[None]
    records: list[tuple[bytes, bytes, Headers]] = field(default_factory=list)
    waiters: list[asyncio.Future[Written]] = field(default_factory=list)
    size: int = 0  # estimated bytes


class EventBatches:
    """The record batches of one producer to one topic (module doc)."""

    def __init__(
        self, producer: AIOKafkaProducer, topic: str, *, batch_bytes: int, max_record: int
    ):
        self._producer = producer
        self._topic = topic
        # Below the producer's own batch size, so that a batch fits one builder (a record
        # bigger than this goes alone, as in aiokafka).
        self._batch_bytes = batch_bytes
        self._max_record = max_record
        self._partitioner = DefaultPartitioner()
        self._sorted: list[int] = []
        self._queued: dict[int, collections.deque[_Batch]] = {}
        self._flushers: dict[int, asyncio.Task[None]] = {}

    async def add(
        self, key: bytes, value: bytes, headers: Headers
    ) -> tuple[asyncio.Future[Written], asyncio.Future[None]]:
        """Queue a record: a future of where it was written (the write's error otherwise;
        cancelling it withdraws nothing) and the future of its batch's outcome (to learn the
        fate of a write given up on)."""
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        if size > self._max_record:
            raise MessageSizeTooLargeError(
                f"The message is {size} bytes when serialized, over the maximum request size"
            )
        partition = await self._partition(key)
        queue = self._queued.get(partition)
        if queue is None:
            queue = self._queued[partition] = collections.deque()
        loop = asyncio.get_running_loop()
        if not queue or (queue[-1].records and queue[-1].size + size > self._batch_bytes):
            queue.append(_Batch(loop.create_future()))
        batch = queue[-1]
        waiter: asyncio.Future[Written] = loop.create_future()
        batch.records.append((key, value, headers))
        batch.waiters.append(waiter)
        batch.size += size
        if partition not in self._flushers:
            # runs once this loop iteration ends: the records asked for meanwhile join
            self._flushers[partition] = asyncio.create_task(self._flush(partition))
        return waiter, batch.outcome

    async def _partition(self, key: bytes) -> int:
        known = self._producer.client.cluster.partitions_for_topic(self._topic)
        if known is None:
            known = await self._producer.partitions_for(self._topic)
        if len(known) != len(self._sorted):  # the first answer, or the topic grew
            self._sorted = sorted(known)
        # a key is never None here, so the partitioner reads no availability
        return int(self._partitioner(key, self._sorted, []))

    async def _flush(self, partition: int) -> None:
        """Send the partition's batches, each once the one before it is acknowledged."""
        queue = self._queued[partition]
        try:
            while queue:
                batch = queue.popleft()  # from here nothing joins it
                try:
                    written = await self._send(partition, batch)
                except asyncio.CancelledError:
                    _settle(batch, asyncio.CancelledError())
                    raise
                except Exception as exc:
                    _settle(batch, exc)
                else:
                    for waiter, where in zip(batch.waiters, written, strict=True):
                        if not waiter.done():
                            waiter.set_result(where)
                    batch.outcome.set_result(None)
        finally:
            del self._flushers[partition]
            for left in queue:  # cancelled (stop): nobody will write these
                _settle(left, asyncio.CancelledError())
            queue.clear()

    async def _send(self, partition: int, batch: _Batch) -> list[Written]:
        """Write `batch` to `partition` and wait for the ack; where each record went. One
        builder unless the estimate fell short (then several, in order, all acknowledged)."""
        producer = self._producer
        parts: list[tuple[asyncio.Future[RecordMetadata], int]] = []
        builder = producer.create_batch()
        count = 0
        for key, value, headers in batch.records:
            if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
                parts.append(
                    (await producer.send_batch(builder, self._topic, partition=partition), count)
                )
                builder, count = producer.create_batch(), 0
                builder.append(timestamp=None, key=key, value=value, headers=headers)
            count += 1
        parts.append((await producer.send_batch(builder, self._topic, partition=partition), count))
        written: list[Written] = []
        for ack, n in parts:
            first = await ack
            written.extend((first.partition, first.offset + i) for i in range(n))
        return written

    async def drain(self) -> None:
        """Wait until every queued batch is written or failed."""
        while self._flushers:
            await asyncio.gather(*self._flushers.values(), return_exceptions=True)


def _settle(batch: _Batch, exc: BaseException) -> None:
    """Fail `batch` (cancel it, for a `CancelledError`): every caller still waiting, and its
    outcome (retrieved here: it is read only after a caller gave up)."""
    cancelled = isinstance(exc, asyncio.CancelledError)
    for waiter in batch.waiters:
        if waiter.done():
            continue
        if cancelled:
            waiter.cancel()
        else:
            # a copy each: one exception raised in many tasks would chain their tracebacks
            waiter.set_exception(copy.copy(exc))
    if cancelled:
        batch.outcome.cancel()
    else:
        batch.outcome.set_exception(exc)
        batch.outcome.exception()
