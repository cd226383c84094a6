"""How many logged events wait for the hydrator: for `entitled status` and operators.

Counts the records after the hydrator group's committed offsets that `ingest.completion`
would complete (events Stripe sent, lacking what the projection needs). Without a key the
hydrator commits nothing past such an event, so this is the number `entitled hydrate
--pending` would complete; with a running hydrator it is what is in flight.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from entitled.kafka import client_options
from entitled.keyring import Keyring
from entitled.settings import Settings
from ingest.completion import needed
from ingest.hydrate.hydrator import SOURCES_TO_COMPLETE, group_of
from ingest.log_scan import partitions


async def unhydrated(settings: Settings) -> int:
    """Events after the hydrator's committed offsets that need completing."""
    tps = [TopicPartition(settings.topic, p) for p in await partitions(settings)]
    if not tps:
        return 0
    # a member of no generation: reads the group's commits, joins nothing, commits nothing
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=group_of(settings),
        enable_auto_commit=False,
    )
    keyring = Keyring(settings)
    await keyring.start()
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        pending = set()
        for tp in tps:
            start = await consumer.committed(tp) or 0
            if start < ends[tp]:
                consumer.seek(tp, start)
                pending.add(tp)
        count = 0
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=1000)
            for tp, records in batches.items():
                for r in records:
                    count += r.offset < ends[tp] and await _needs(keyring, r)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return count
    finally:
        await consumer.stop()
        await keyring.stop()


async def _needs(keyring: Keyring, record: Any) -> bool:
    headers = dict(record.headers)
    if headers.get("source") not in SOURCES_TO_COMPLETE:
        return False
    opened = await keyring.open(record.value, headers)
    if opened.forgotten:
        return False
    try:
        event = orjson.loads(opened.value)
    except orjson.JSONDecodeError:
        return False
    return isinstance(event, dict) and needed(event) is not None
