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
from ingest.log_scan import partitions, records_between


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
        starts = {tp: await consumer.committed(tp) or 0 for tp in tps}
        count = 0
        async for record in records_between(consumer, starts, ends):
            count += await _needs(keyring, record)
        return count
    finally:
        await consumer.stop()
        await keyring.stop()


async def _needs(keyring: Keyring, record: Any) -> bool:
    headers = dict(record.headers)
    if headers.get("source") not in SOURCES_TO_COMPLETE:
        return False
    opened = await keyring.open_record(record)
    if opened.unread:
        return False
    try:
        event = orjson.loads(opened.value)
    except orjson.JSONDecodeError:
        return False
    return isinstance(event, dict) and needed(event) is not None
