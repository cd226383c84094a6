"""Events gathered into one record batch per partition (`ingest.batches`), on a real broker:
each key's events land in the order they were handed over, every acknowledged write is
where `publish` said, and a record Kafka cannot take fails alone."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import replace

from entitled.settings import Settings
from ingest.errors import LogUnavailable
from ingest.producer import EventProducer
from tests.support.kafka import read_topic

KEYS = [f"cus_batch{i}" for i in range(5)]


async def test_batches_keep_each_keys_order_and_say_where_they_wrote(settings: Settings) -> None:
    settings = replace(settings, max_body_bytes=64 * 1024)
    producer = EventProducer(settings, seal=False)
    await producer.start()
    try:
        written: dict[bytes, tuple[int, int]] = {}
        n = 0
        # Waves of concurrent writes: the writes of a wave gather into batches while the
        # batch before them is in flight; 20 KiB values make one key's wave of 40 more than
        # a batch holds, so it is split over several batches.
        for size in (100, 20 * 1024, 100):
            values = []
            for _ in range(40):
                for key in KEYS:
                    values.append((key, b"%06d:" % n + b"x" * size))
                    n += 1
            places = await asyncio.gather(
                *(producer.publish(v, key=k, headers=[("seq", v[:6])]) for k, v in values)
            )
            written.update((v[:6], p) for (_, v), p in zip(values, places, strict=True))
        # one too large for a request fails alone, the writes beside it land
        big = b"%06d:" % n + b"x" * (settings.max_body_bytes + 128 * 1024)
        beside = [(k, b"%06d:" % (n + 1 + i)) for i, k in enumerate(KEYS)]
        results = await asyncio.gather(
            producer.publish(big, key=KEYS[0], headers=[]),
            *(producer.publish(v, key=k, headers=[("seq", v[:6])]) for k, v in beside),
            return_exceptions=True,
        )
        assert isinstance(results[0], LogUnavailable)
        for (_, v), place in zip(beside, results[1:], strict=True):
            assert isinstance(place, tuple), place
            written[v[:6]] = place
    finally:
        await producer.stop()

    records = await read_topic(settings)
    assert len(records) == len(written) == n + len(KEYS)
    order: dict[bytes, list[bytes]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        seq = record.value[:6]
        assert written[seq] == (record.partition, record.offset)
        assert record.key is not None
        order[record.key].append(seq)
    assert set(order) == {k.encode() for k in KEYS}
    for seqs in order.values():
        assert seqs == sorted(seqs)  # handed over in this order, logged in this order
