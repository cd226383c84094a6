"""Reading header values back from the log (no group, no commits): what is already there.

Reconcile asks which Stripe event ids the log holds; the hydrator asks which source events
it already completed (`hydrated-from` of its own records). Both read from the offsets at a
time (Kafka timestamps are write times) to the end offsets as of the call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from entitled.kafka import client_options
from entitled.settings import Settings


async def header_values(
    settings: Settings, since_s: float, name: str, *, source: str | None = None
) -> set[str]:
    """The values of header `name` of every record written at or after `since_s` (Unix
    seconds; 0 reads the whole topic), of records whose `source` header is `source` when
    given."""
    consumer = await _reader(settings)
    try:
        tps = [TopicPartition(settings.topic, p) for p in await partitions(settings)]
        if not tps:
            return set()
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        found = await consumer.offsets_for_times({tp: int(since_s * 1000) for tp in tps})
        starts = {tp: f.offset if (f := found.get(tp)) is not None else end[tp] for tp in tps}
        wanted_source = source.encode() if source is not None else None
        values: set[str] = set()
        async for record in records_between(consumer, starts, end):
            headers = dict(record.headers)
            value = headers.get(name)
            if value is not None and (
                wanted_source is None or headers.get("source") == wanted_source
            ):
                values.add(value.decode())
        return values
    finally:
        await consumer.stop()


async def records_between(
    consumer: AIOKafkaConsumer,
    starts: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of `consumer`'s assigned partitions from `starts` up to (not including)
    `ends`: the end offsets as of the caller's question, so records written meanwhile are not
    waited for."""
    pending = set()
    for tp, start in starts.items():
        if start < ends[tp]:
            consumer.seek(tp, start)
            pending.add(tp)
    while pending:
        batches = await consumer.getmany(*pending, timeout_ms=1000)
        for tp, records in batches.items():
            for record in records:
                if record.offset < ends[tp]:
                    yield record
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)


async def write_times(settings: Settings, offsets: dict[TopicPartition, int]) -> list[float]:
    """The write times (Unix seconds) of the records at `offsets`, one per partition."""
    if not offsets:
        return []
    consumer = await _reader(settings)
    try:
        consumer.assign(list(offsets))
        for tp, offset in offsets.items():
            consumer.seek(tp, offset)
        times = []
        for tp in offsets:
            record = await consumer.getone(tp)
            times.append(record.timestamp / 1000)
        return times
    finally:
        await consumer.stop()


async def _reader(settings: Settings) -> AIOKafkaConsumer:
    """A started consumer of no group: it reads where it is told and commits nothing."""
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False, group_id=None)
    await consumer.start()
    return consumer


async def partitions(settings: Settings) -> list[int]:
    """The partition numbers of `settings.topic`, as the cluster knows them."""
    # The consumer's own metadata only covers topics it subscribed to; ask the cluster.
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        (meta,) = await admin.describe_topics([settings.topic])
        return sorted(int(p["partition"]) for p in meta.get("partitions", []))
    finally:
        await admin.close()
