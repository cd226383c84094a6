"""The test topic: publish events as the ingest does, read records back."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from entitled.kafka import client_options
from entitled.keyring import Keyring
from entitled.settings import Settings
from entitled.topics import end_offsets as _end_offsets
from ingest.keys import event_headers, routing_key
from ingest.producer import EventProducer
from launcher.services._process import run_async
from launcher.stripe import events as se
from processors.replay import read_log


def publish(settings: Settings, events: Iterable[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """Write events to the topic as the ingest does (raw bytes, key, headers); return their
    (partition, offset)."""

    async def go() -> list[tuple[int, int]]:
        # The tests' own writer is not what they measure: patient where a loaded machine
        # makes a just-restarted broker slow to take writes (ingest's 5 s would fail them).
        producer = EventProducer(dataclasses.replace(settings, produce_timeout_s=30.0))
        await producer.start()
        try:
            return [
                await producer.publish(
                    se.encode(e),
                    key=routing_key(e),
                    headers=event_headers(e, source="webhook", received_at=time.time()),
                )
                for e in events
            ]
        finally:
            await producer.stop()

    return run_async(go)


async def end_offsets(settings: Settings) -> dict[int, int]:
    """End offset per partition of `settings.topic`."""
    return await _end_offsets(settings)


@asynccontextmanager
async def _consumer(settings: Settings) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def read_topic(
    settings: Settings, timeout: float = 30.0, *, opened: bool = True
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `settings.topic` from offset 0 to the end offsets as of now, values
    opened with their data keys (as every reader does) unless `opened` is false."""
    records = await _read_topic(settings, timeout)
    if not opened:
        return records
    async with Keyring(settings) as keyring:
        return [
            # as the log's readers open them: a key written just after its record is waited for
            dataclasses.replace(r, value=(await keyring.open_record(r)).value)
            for r in records
        ]


async def _read_topic(settings: Settings, timeout: float) -> list[ConsumerRecord[bytes, bytes]]:
    async with _consumer(settings) as consumer:
        parts = [TopicPartition(settings.topic, p) for p in range(settings.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        records: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(timeout):
            while not await _read_to(consumer, ends):
                batch = await consumer.getmany(timeout_ms=500)
                for tp, tp_records in batch.items():
                    records.extend(r for r in tp_records if r.offset < ends[tp])
        return records


async def _read_to(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    event_id: str | None
    # its data key never reached the keys topic: the write of that key failed, so the
    # webhook was refused and sent again (the event is in the log again under another key)
    orphan: bool = False


def log_records(settings: Settings) -> list[Record]:
    """Position and event id of every record of the settings' topic, up to the current end."""

    async def go() -> list[Record]:
        ends = await _end_offsets(settings)
        out: list[Record] = []
        async with Keyring(settings) as keyring:
            batches = [
                b async for b in read_log(settings, settings.topic, {}, ends, keyring=keyring)
            ]
        for batch in batches:
            for m in batch:
                try:
                    event_id = orjson.loads(m.value).get("id")
                except (orjson.JSONDecodeError, AttributeError):
                    event_id = None
                out.append(Record(m.partition, m.offset, event_id, orphan=m.orphan))
        return out

    return run_async(go)
