"""The one place topics are created, against the session Kafka."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from entitled.settings import Settings
from entitled.topics import (
    TopicError,
    compare,
    end_offsets,
    ensure_changes_topic,
    ensure_event_topic,
    ensure_topic,
    event_topic_configs,
)
from launcher.services import Endpoints


async def _describe(bootstrap: str, name: str, keys: tuple[str, ...]) -> tuple[int, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (meta,) = await admin.describe_topics([name])
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, dict.fromkeys(keys))]
        )
    finally:
        await admin.close()
    configs = {entry[0]: entry[1] for entry in response.resources[0][4]}
    return len(meta["partitions"]), configs


def test_event_topic_takes_the_largest_accepted_body() -> None:
    configs = event_topic_configs(Settings(max_body_bytes=1024 * 1024))
    assert configs["retention.ms"] == "-1"
    assert int(configs["max.message.bytes"]) > 1024 * 1024


async def test_ensure_topic_is_idempotent_and_keeps_forever(services: Endpoints) -> None:
    name = f"t.forever.{uuid.uuid4().hex[:8]}"
    settings = Settings(kafka_bootstrap_servers=services.bootstrap)
    assert await ensure_topic(settings, name, 3, configs={"cleanup.policy": "delete"}) == []
    assert await ensure_topic(settings, name, 3) == []
    partitions, configs = await _describe(services.bootstrap, name, ("retention.ms",))
    assert partitions == 3
    assert configs["retention.ms"] == "-1"


async def test_event_topic_is_the_same_whoever_creates_it(services: Endpoints) -> None:
    settings = Settings(
        kafka_bootstrap_servers=services.bootstrap,
        topic=f"t.event.{uuid.uuid4().hex[:8]}",
        partitions=5,
        max_body_bytes=2 * 1024 * 1024,
    )
    assert await ensure_event_topic(settings) == []
    # A second process with other settings finds the topic, leaves it as it is, and says
    # what differs from what it would have made.
    differences = await ensure_event_topic(replace(settings, partitions=2, max_body_bytes=1024))
    assert len(differences) == 1 and "has 5, the settings say 2" in differences[0]
    keys = tuple(event_topic_configs(settings))
    partitions, configs = await _describe(services.bootstrap, settings.topic, keys)
    assert partitions == 5
    assert configs == event_topic_configs(settings)
    assert await end_offsets(settings) == dict.fromkeys(range(5), 0)


async def test_an_operators_topic_is_checked(services: Endpoints) -> None:
    """A topic made beforehand by an operator: each difference from what the project would
    have made is said; a retention that would delete events is refused."""
    settings = Settings(
        kafka_bootstrap_servers=services.bootstrap, topic=f"t.op.{uuid.uuid4().hex[:8]}"
    )
    week = str(7 * 24 * 3600 * 1000)
    admin = AIOKafkaAdminClient(bootstrap_servers=services.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(settings.topic, 3, 1, topic_configs={"retention.ms": week})]
        )
    finally:
        await admin.close()
    with pytest.raises(TopicError) as refused:
        await ensure_event_topic(settings)
    message = str(refused.value)
    assert f"retention.ms: topic {settings.topic!r} has {week}" in message
    assert "kept forever" in message
    # The change feed's topic is not the log: a difference there is said, not refused.
    changes = replace(settings, changes_topic=settings.topic, partitions=3)
    differences = await ensure_changes_topic(changes)
    assert differences == [], differences  # 7 days is what the project makes
    differences = await ensure_changes_topic(replace(changes, partitions=4))
    assert ["partitions" in d for d in differences] == [True]


def test_compare_says_each_difference() -> None:
    wanted = {"retention.ms": "-1", "max.message.bytes": "2000", "cleanup.policy": "delete"}
    found = {"retention.ms": "-1", "max.message.bytes": "4000", "cleanup.policy": "compact"}
    assert compare("t", 8, wanted, 8, found) == [
        "cleanup.policy: topic 't' has compact, the project creates it with delete"
    ]
    assert compare("t", 8, wanted, 8, {**found, "cleanup.policy": "delete"}) == []
    smaller = compare(
        "t", 8, wanted, 2, {**found, "max.message.bytes": "100", "cleanup.policy": "delete"}
    )
    assert [d.split(":")[0] for d in smaller] == ["partitions", "max.message.bytes"]
