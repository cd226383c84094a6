"""Kafka administration every stage shares: the one place the event topic is created.

Ingest, the worker, backfill, reconcile, replay, `entitled dev` and the benchmarks all call
`ensure_event_topic(settings)`, so the topic's partitions, replication and configs never
depend on which process happened to start first.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from entitled.settings import Settings

__all__ = [
    "TopicError",
    "end_offsets",
    "ensure_changes_topic",
    "ensure_event_topic",
    "ensure_topic",
    "event_topic_configs",
]

_TOPIC_ALREADY_EXISTS = 36
# Room for key and headers above the largest body, so a body at the limit fits the topic.
_RECORD_OVERHEAD = 64 * 1024
_LEADER_TIMEOUT_S = 30.0


class TopicError(Exception):
    """A topic cannot be created or has no leader for some partition."""


def event_topic_configs(settings: Settings) -> dict[str, str]:
    """The event topic's configs: kept forever, records as large as ingest accepts."""
    return {
        "retention.ms": "-1",
        "max.message.bytes": str(settings.max_body_bytes + _RECORD_OVERHEAD),
    }


async def ensure_event_topic(settings: Settings) -> None:
    """Create the event topic as `settings` describe it; an existing topic is fine."""
    await _ensure(settings, settings.topic, event_topic_configs(settings))


async def ensure_changes_topic(settings: Settings) -> None:
    """Create the topic the relay publishes the change feed to (kept 7 days: consumers
    catch up from it or from `GET /v1/changes`; the table keeps every change)."""
    await _ensure(settings, settings.changes_topic, {"retention.ms": str(7 * 24 * 3600 * 1000)})


async def _ensure(settings: Settings, name: str, configs: dict[str, str]) -> None:
    if not settings.kafka_bootstrap_servers:
        raise TopicError("no Kafka: set KAFKA_BOOTSTRAP_SERVERS (or run through `entitled`)")
    await ensure_topic(
        settings.kafka_bootstrap_servers,
        name,
        settings.partitions,
        settings.replication_factor,
        configs,
    )


async def ensure_topic(
    bootstrap: str,
    name: str,
    partitions: int,
    replication_factor: int = 1,
    configs: dict[str, str] | None = None,
) -> None:
    """Create topic `name` kept forever (`retention.ms=-1`) unless `configs` say otherwise;
    an existing topic is left as it is.

    Returns once every partition has a leader, so producers can write at once.
    """
    topic_configs = {"retention.ms": "-1", **(configs or {})}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, partitions, replication_factor, topic_configs=topic_configs)]
        )
        for entry in response.topic_errors:
            code = entry[1]
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                message = entry[2] if len(entry) > 2 else ""
                raise TopicError(f"Creating Kafka topic {name!r} failed: error {code} {message}")
        deadline = time.monotonic() + _LEADER_TIMEOUT_S
        while True:
            (meta,) = await admin.describe_topics([name])
            parts = meta.get("partitions", [])
            if meta["error_code"] == 0 and parts and all(p["leader"] >= 0 for p in parts):
                return
            if time.monotonic() > deadline:
                raise TopicError(f"Kafka topic {name!r} has no leader for every partition.")
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The log end offset of every partition of `topic`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()  # no public call forces a fetch
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await consumer.stop()
