"""Reconcile against a real localstripe's /v1/events into a real Kafka topic."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import httpx
import orjson
import pytest

from entitled.settings import Settings
from entitled.topics import ensure_event_topic
from ingest.keys import event_headers, routing_key
from ingest.producer import EventProducer
from ingest.reconcile import parse_since, reconcile
from tests.ingest.stripe_seed import seed
from tests.support.kafka import read_topic
from tests.support.localstripe import API_KEY
from tests.support.localstripe import localstripe as localstripe


@pytest.fixture
def stripe_settings(settings: Settings, localstripe: str) -> Settings:
    return replace(settings, stripe_api_key=API_KEY, stripe_api_base=localstripe)


def _api_events(base: str) -> list[dict[str, object]]:
    body = httpx.get(f"{base}/v1/events", params={"limit": 100}, auth=(API_KEY, "")).json()
    assert not body["has_more"]
    return list(body["data"])


async def test_writes_missing_events_once(stripe_settings: Settings) -> None:
    base = stripe_settings.stripe_api_base
    assert base and stripe_settings.kafka_bootstrap_servers
    await asyncio.to_thread(seed, base, API_KEY, customers=2)
    events = await asyncio.to_thread(_api_events, base)
    assert len(events) > 10

    # Half of them arrived as webhooks already.
    await ensure_event_topic(stripe_settings)
    producer = EventProducer(stripe_settings)
    await producer.start()
    try:
        for event in events[::2]:
            headers = event_headers(event, source="webhook", received_at=time.time())
            await producer.publish(orjson.dumps(event), key=routing_key(event), headers=headers)
    finally:
        await producer.stop()

    first = await reconcile(stripe_settings, page_size=5)
    missing = events[1::2]
    assert (first.listed, first.already_present, first.written) == (
        len(events),
        len(events[::2]),
        len(missing),
    )
    records = await read_topic(stripe_settings)
    written = [r for r in records if dict(r.headers)["source"] == b"reconcile"]
    by_id = {e["id"]: e for e in missing}
    assert sorted(dict(r.headers)["stripe-event-id"].decode() for r in written) == sorted(by_id)
    for record in written:
        event = by_id[dict(record.headers)["stripe-event-id"].decode()]
        assert record.value == orjson.dumps(event)  # the API's JSON, key order kept
        assert record.key.decode() == routing_key(event)

    second = await reconcile(stripe_settings, page_size=5)
    assert (second.listed, second.already_present, second.written) == (len(events), len(events), 0)
    assert len(await read_topic(stripe_settings)) == len(records)


async def test_since_bounds_the_listing(stripe_settings: Settings) -> None:
    base = stripe_settings.stripe_api_base
    assert base
    await asyncio.to_thread(seed, base, API_KEY, customers=1)
    later = await reconcile(stripe_settings, since=time.time() + 3600)
    assert (later.listed, later.written) == (0, 0)
    assert await read_topic(stripe_settings) == []


def test_parse_since() -> None:
    assert parse_since("1700000000") == 1700000000
    assert parse_since("2023-11-14") == 1699920000
    assert parse_since("2023-11-14T22:13:20") == 1700000000
    assert parse_since("2023-11-14T23:13:20+01:00") == 1700000000
    with pytest.raises(ValueError):
        parse_since("last tuesday")
