"""The one place topics are created, against the session Kafka."""

from __future__ import annotations

import uuid
from dataclasses import replace

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from entitled.settings import Settings
from entitled.topics import end_offsets, ensure_event_topic, ensure_topic, event_topic_configs
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
    await ensure_topic(services.bootstrap, name, 3, configs={"cleanup.policy": "delete"})
    await ensure_topic(services.bootstrap, name, 3)
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
    await ensure_event_topic(settings)
    # A second process with other settings finds the topic and leaves it as it is.
    await ensure_event_topic(replace(settings, partitions=2, max_body_bytes=1024))
    keys = ("retention.ms", "max.message.bytes")
    partitions, configs = await _describe(services.bootstrap, settings.topic, keys)
    assert partitions == 5
    assert configs == event_topic_configs(settings)
    assert await end_offsets(services.bootstrap, settings.topic) == dict.fromkeys(range(5), 0)
