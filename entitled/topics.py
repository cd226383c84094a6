"""Kafka administration every stage shares: the one place the event topic is created.

Ingest, the worker, backfill, reconcile, replay, `entitled dev` and the benchmarks all call
`ensure_event_topic(settings)`, so the topic's partitions, replication and configs never
depend on which process happened to start first. A topic an operator created beforehand is
checked against what the project would have made (partitions, retention), and the
differences are said.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from entitled.kafka import client_options
from entitled.settings import Settings

__all__ = [
    "TopicError",
    "compare",
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

log = logging.getLogger(__name__)


class TopicError(Exception):
    """A topic cannot be created or has no leader for some partition."""


def event_topic_configs(settings: Settings) -> dict[str, str]:
    """The event topic's configs: kept forever, records as large as ingest accepts."""
    return {
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "cleanup.policy": "delete",  # compaction would drop all but each customer's last event
        "max.message.bytes": str(settings.max_body_bytes + _RECORD_OVERHEAD),
    }


async def ensure_event_topic(settings: Settings) -> list[str]:
    """Create the event topic as `settings` describe it. An existing topic (made by an
    earlier process or by an operator) is checked: a partition count or configs other than
    `settings` say are logged and returned; a retention that would delete events is refused
    (the log is the truth, kept forever)."""
    differences = await ensure_topic(
        settings, settings.topic, settings.partitions, configs=event_topic_configs(settings)
    )
    losing = [d for d in differences if d.startswith(_DELETES)]
    if losing:
        raise TopicError(
            f"Kafka topic {settings.topic!r} would delete events: {'; '.join(losing)}. "
            "The event log is kept forever: set retention.ms=-1, retention.bytes=-1, "
            "cleanup.policy=delete on it (kafka-configs --alter --entity-type topics)."
        )
    return differences


async def ensure_changes_topic(settings: Settings) -> list[str]:
    """Create the topic the relay publishes the change feed to (kept 7 days: consumers
    catch up from it or from `GET /v1/changes`; the table keeps every change)."""
    return await ensure_topic(
        settings,
        settings.changes_topic,
        settings.partitions,
        configs={"retention.ms": str(7 * 24 * 3600 * 1000)},
    )


# Config keys whose difference means records are deleted that the project keeps.
_DELETES = ("retention.ms", "retention.bytes", "cleanup.policy")


async def ensure_topic(
    settings: Settings,
    name: str,
    partitions: int,
    replication_factor: int | None = None,
    configs: dict[str, str] | None = None,
) -> list[str]:
    """Create topic `name` kept forever (`retention.ms=-1`) unless `configs` say otherwise,
    with `settings`' replication factor unless `replication_factor` says otherwise.

    An existing topic is left as it is, and compared: the returned list says, one line per
    difference, where its partition count, retention or other `configs` differ from what
    the project would have created (each is logged as a warning too).

    Returns once every partition has a leader, so producers can write at once.
    """
    topic_configs = {"retention.ms": "-1", **(configs or {})}
    rf = replication_factor if replication_factor is not None else settings.replication_factor
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, partitions, rf, topic_configs=topic_configs)]
        )
        existed = False
        for entry in response.topic_errors:
            code = entry[1]
            existed = existed or code == _TOPIC_ALREADY_EXISTS
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                message = entry[2] if len(entry) > 2 else ""
                raise TopicError(f"Creating Kafka topic {name!r} failed: error {code} {message}")
        deadline = time.monotonic() + _LEADER_TIMEOUT_S
        while True:
            (meta,) = await admin.describe_topics([name])
            parts = meta.get("partitions", [])
            if meta["error_code"] == 0 and parts and all(p["leader"] >= 0 for p in parts):
                break
            if time.monotonic() > deadline:
                raise TopicError(f"Kafka topic {name!r} has no leader for every partition.")
            await asyncio.sleep(0.05)
        if not existed:
            return []
        actual = await _configs(admin, name, tuple(topic_configs))
    finally:
        await admin.close()
    differences = compare(name, partitions, topic_configs, len(parts), actual)
    for line in differences:
        log.warning("%s", line)
    return differences


async def _configs(admin: AIOKafkaAdminClient, name: str, keys: tuple[str, ...]) -> dict[str, str]:
    (response,) = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name, dict.fromkeys(keys))]
    )
    # resources: (error_code, error_message, type, name, [(key, value, ...), ...])
    return {entry[0]: entry[1] for resource in response.resources for entry in resource[4]}


def compare(
    name: str, partitions: int, wanted: dict[str, str], found_partitions: int, found: dict[str, str]
) -> list[str]:
    """What differs between the topic the project would create and the one found."""
    differences = []
    if found_partitions != partitions:
        differences.append(
            f"partitions: topic {name!r} has {found_partitions}, the settings say {partitions} "
            "(ENTITLED_PARTITIONS); keys still keep one customer in one partition"
        )
    for key, value in wanted.items():
        have = found.get(key)
        if have is None or have == value:
            continue
        if key == "max.message.bytes" and int(have) >= int(value):
            continue  # room for larger records than ingest accepts: fine
        differences.append(f"{key}: topic {name!r} has {have}, the project creates it with {value}")
    return differences


async def end_offsets(settings: Settings, topic: str | None = None) -> dict[int, int]:
    """The log end offset of every partition of `topic` (default: the event topic)."""
    topic = topic or settings.topic
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
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
