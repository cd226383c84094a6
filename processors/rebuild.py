"""One customer's rebuild in place (`entitled replay --customer`): that customer's rows of
the active version folded again from their events in the log, with today's rules.
"""

from __future__ import annotations

from typing import Any

import psycopg
from aiokafka.partitioner import DefaultPartitioner

from entitled.keyring import Keyring
from entitled.settings import Settings
from entitled.topics import end_offsets
from projections import offsets, versions
from projections import schema as db
from projections.model.entitlements import Policy
from projections.store import ProjectionStore
from projections.types import Message

from .replay import read_log

__all__ = ["partition_of", "rebuild_customer"]


async def _events(
    settings: Settings, keyring: Keyring, customer: str, partition: int, start: int, stop: int
) -> list[Message]:
    """The customer's records of `partition` in [start, stop), opened."""
    return [
        m
        async for batch in read_log(
            settings,
            settings.topic,
            {partition: start},
            {partition: stop},
            keyring=keyring,
            only_key=customer,
        )
        for m in batch
    ]


def partition_of(key: str, partitions: int) -> int:
    """The partition the producer's default partitioner (murmur2, as Java's) picks."""
    return int(DefaultPartitioner()(key.encode(), list(range(partitions)), list(range(partitions))))


async def rebuild_customer(settings: Settings, customer: str) -> dict[str, Any]:
    """Rebuild one customer's rows in place from that customer's events only.

    The customer's events all sit in one partition (keyed by customer id). We read that
    partition up to its checkpoint holding no lock, then lock the checkpoint (the live worker
    waits), read only the tail it moved meanwhile, and in the same transaction drop the
    customer's mirrored rows, dedup records and entitlements and
    fold their events again: atomically, touching no other customer. The dead letters stay,
    so the operator's decisions hold: a skipped event stays skipped, a parked customer
    stays parked from its first dead letter on.
    """
    assert settings.database_url and settings.kafka_bootstrap_servers
    # The topic's real partition count, which the producer's partitioner used.
    partition = partition_of(customer, len(await end_offsets(settings)))
    store = ProjectionStore(settings.topic, Policy.from_settings(settings))
    async with Keyring(settings) as keyring:
        # Read first, holding nothing: the partition from offset 0 of a log kept for ever can
        # take minutes, and the live worker of that partition waited on its checkpoint row
        # for the whole scan (issue 19, point 6). Then lock and read only the tail folded
        # meanwhile.
        async with await psycopg.AsyncConnection.connect(
            settings.database_url, autocommit=True
        ) as peek:
            scanned_schema = await db.active_schema(peek)
            scanned_to = (await offsets.read(peek, scanned_schema, settings.topic)).get(
                partition, 0
            )
        early = await _events(settings, keyring, customer, partition, 0, scanned_to)
        conn = await psycopg.AsyncConnection.connect(settings.database_url)
        async with conn, conn.transaction():
            schema = await db.active_schema(conn, lock=True)
            checkpoint = await offsets.lock(conn, schema, settings.topic, [partition])
            end = checkpoint.get(partition, 0)
            if schema != scanned_schema:  # a swap or rollback meanwhile: read it all, locked
                early, scanned_to = [], 0
            early = [m for m in early if m.offset < end]  # checkpoints never go back; in case
            messages = early + await _events(
                settings, keyring, customer, partition, scanned_to, end
            )
            await versions.delete_customer(conn, schema, customer)
            await versions.forget_applied(conn, schema, partition, [m.offset for m in messages])
            result = await store.rebuild(conn, schema, messages, customer=customer)
    return {
        "customer": customer,
        "partition": partition,
        "events": len(messages),
        "poison": result.poison,
    }
