"""One customer's rebuild in place (`entitled replay --customer`): that customer's rows of
the active version folded again from their events in the log, with today's rules.
"""

from __future__ import annotations

from typing import Any

import psycopg
from aiokafka.partitioner import DefaultPartitioner

from entitled.settings import Settings
from entitled.topics import end_offsets
from projections import offsets, versions
from projections import schema as db
from projections.model.entitlements import Policy
from projections.store import ProjectionStore

from .replay import read_log

__all__ = ["partition_of", "rebuild_customer"]


def partition_of(key: str, partitions: int) -> int:
    """The partition the producer's default partitioner (murmur2, as Java's) picks."""
    return int(DefaultPartitioner()(key.encode(), list(range(partitions)), list(range(partitions))))


async def rebuild_customer(settings: Settings, customer: str) -> dict[str, Any]:
    """Rebuild one customer's rows in place from that customer's events only.

    The customer's events all sit in one partition (keyed by customer id). We lock that
    partition's checkpoint (the live worker waits), read the partition up to it, and in the
    same transaction drop the customer's mirrored rows, dedup records and entitlements and
    fold their events again: atomically, touching no other customer. The dead letters stay,
    so the operator's decisions hold: a skipped event stays skipped, a parked customer
    stays parked from its first dead letter on.
    """
    assert settings.database_url and settings.kafka_bootstrap_servers
    # The topic's real partition count, which the producer's partitioner used.
    partition = partition_of(customer, len(await end_offsets(settings)))
    store = ProjectionStore(settings.topic, Policy.from_settings(settings))
    conn = await psycopg.AsyncConnection.connect(settings.database_url)
    async with conn, conn.transaction():
        schema = await db.active_schema(conn, lock=True)
        checkpoint = await offsets.lock(conn, schema, settings.topic, [partition])
        messages = [
            m
            async for batch in read_log(
                settings,
                settings.topic,
                {partition: 0},
                {partition: checkpoint.get(partition, 0)},
                only_key=customer,
            )
            for m in batch
        ]
        await versions.delete_customer(conn, schema, customer)
        await versions.forget_applied(conn, schema, partition, [m.offset for m in messages])
        result = await store.rebuild(conn, schema, messages, customer=customer)
    return {
        "customer": customer,
        "partition": partition,
        "events": len(messages),
        "poison": result.poison,
    }
