"""Stripe Entitlements features into the log: Stripe sends no webhook when a product's
features change, so they are listed (`/v1/products`, then `/v1/products/{id}/features` to the
end) and each product's whole list is logged as one `product.features.snapshot`
(`ingest.snapshots.product_features_event`) when it differs from the product's newest
snapshot in the log. Backfill runs it after its lists; `entitled reconcile --features` runs it
alone. Archived features stay in the list (`entitlement_feature.active: false`): the fold
skips them.

What the log holds is read from its records' headers (type `product.features.snapshot`, key =
the product id): one pass over the topic per run, no values decoded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import stripe
from aiokafka import AIOKafkaConsumer, TopicPartition

from entitled.kafka import client_options
from entitled.settings import Settings
from entitled.topics import ensure_event_topic
from ingest.keys import event_headers, routing_key
from ingest.log_scan import partitions, records_between
from ingest.producer import EventProducer
from ingest.snapshots import PRODUCT_FEATURES_TYPE, features_digest, product_features_event
from ingest.stripe_api import StripeApi

__all__ = ["FeaturesResult", "logged_features", "mirror_features", "reconcile_features"]


@dataclass
class FeaturesResult:
    products: int = 0
    written: int = 0  # snapshots logged: the product's features changed (or were new)
    unchanged: int = 0
    unavailable: bool = False  # the server has no product features endpoint (404)


async def logged_features(settings: Settings) -> dict[str, str]:
    """Product id -> the id of its newest `product.features.snapshot` in the log."""
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False, group_id=None)
    await consumer.start()
    newest: dict[str, str] = {}
    wanted = PRODUCT_FEATURES_TYPE.encode()
    try:
        tps = [TopicPartition(settings.topic, p) for p in await partitions(settings)]
        if not tps:
            return newest
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        start = await consumer.beginning_offsets(tps)
        async for record in records_between(consumer, start, end):
            headers = dict(record.headers)
            if headers.get("stripe-event-type") == wanted:
                event_id = headers.get("stripe-event-id", b"").decode()
                if record.key:  # a product's snapshots share its key: log order
                    newest[record.key.decode()] = event_id
        return newest
    finally:
        await consumer.stop()


async def _features_of(api: StripeApi, product_id: str) -> tuple[list[dict[str, Any]], Any, int]:
    listed: list[dict[str, Any]] = []
    version, read_at = None, int(time.time())
    first = True
    async for page in api.pages(f"/v1/products/{product_id}/features", {}):
        listed.extend(page.data)
        # the first page's request second (see ingest.summary.complete; issue 19, point 1)
        version, read_at = page.api_version, page.read_at if first else read_at
        first = False
    return listed, version, read_at


async def mirror_features(
    settings: Settings, api: StripeApi, producer: EventProducer, *, source: str
) -> FeaturesResult:
    """List every product's features; log a snapshot of each list that changed."""
    result = FeaturesResult()
    logged = await logged_features(settings)
    async for page in api.pages("/v1/products", {}):
        for product in page.data:
            product_id = product.get("id")
            if not isinstance(product_id, str) or product.get("deleted") is True:
                continue
            result.products += 1
            try:
                listed, version, read_at = await _features_of(api, product_id)
            except stripe.StripeError as exc:
                if exc.http_status == 404 and result.products == 1:
                    result.unavailable = True  # a fake without the endpoint
                    return result
                raise
            previous = logged.get(product_id)
            if previous is None and not listed:
                continue  # never had features: nothing to say
            event = product_features_event(
                product_id, listed, api_version=version, read_at=read_at, previous=previous
            )
            if features_digest(event["id"]) == features_digest(previous):
                result.unchanged += 1
                continue
            headers = event_headers(event, source=source, received_at=time.time())
            await producer.publish(orjson.dumps(event), key=routing_key(event), headers=headers)
            result.written += 1
    return result


async def reconcile_features(settings: Settings, *, rps: float | None = None) -> FeaturesResult:
    """`entitled reconcile --features`: re-list products' features, log what changed."""
    assert settings.kafka_bootstrap_servers, "kafka_bootstrap_servers is not set"
    api = StripeApi.from_settings(settings, rps=rps)
    await ensure_event_topic(settings)
    producer = EventProducer(settings)
    try:
        await producer.start()
        return await mirror_features(settings, api, producer, source="reconcile")
    finally:
        await producer.stop()
        await api.close()
