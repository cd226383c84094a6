"""Refresh on demand: read objects from the Stripe API now and log them as snapshots.

`entitled refresh ID...` (and, when mounted, `POST /v1/refresh`): the app that just wrote
to Stripe (a subscription created, a refund issued) wants our tables to reflect it now, not
when the webhook arrives. Each id is read as the hydrator reads it (`fetch_for_id`: checkout
sessions with their line items, invoices with their payments) and written as a snapshot
event with source `refresh`, `created` the second the read was sent and a new id per read
(`evt_refresh_<random>`): the id answered is always one the fold has not seen, so a read
with `min_event=` waits for this read, and an object back in an earlier state is healed
(issue 19, point 2).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import orjson
import stripe

from entitled.settings import Settings
from ingest.completion import fetch_for_id
from ingest.keys import event_headers, object_created_at, routing_key
from ingest.producer import EventProducer
from ingest.snapshots import read_event, read_id
from ingest.stripe_api import StripeApi


@dataclass(frozen=True)
class Refreshed:
    """What became of one id: `event_id` written, or why not (`unknown_id`, `not_found`,
    `no_state`)."""

    object_id: str
    event_id: str | None
    outcome: str


async def refresh(
    settings: Settings,
    ids: Iterable[str],
    *,
    api: StripeApi | None = None,
    producer: EventProducer | None = None,
) -> list[Refreshed]:
    """Read each id now and write its snapshot; return one `Refreshed` per id, in order."""
    own_api = api is None
    if api is None:
        api = StripeApi.from_settings(settings)
    own_producer = producer is None
    if producer is None:
        producer = EventProducer(settings)
        await producer.start()
    try:
        return [await _one(api, producer, object_id) for object_id in ids]
    finally:
        if own_producer:
            await producer.stop()
        if own_api:
            await api.close()


async def _one(api: StripeApi, producer: EventProducer, object_id: str) -> Refreshed:
    fetch = fetch_for_id(object_id)
    if fetch is None:
        return Refreshed(object_id, None, "unknown_id")
    try:
        got = await api.retrieve(fetch.path, fetch.params)
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            return Refreshed(object_id, None, "not_found")
        raise
    event_id = read_id("evt_refresh_")  # every read a new snapshot (issue 19, point 2)
    event = read_event(got.obj, event_id=event_id, api_version=got.api_version, read_at=got.read_at)
    if event is None:
        return Refreshed(object_id, None, "no_state")
    headers = event_headers(event, source="refresh", received_at=time.time())
    key, made = routing_key(event), object_created_at(event)
    await producer.catch_up()  # a forget made before this read counts
    if producer.forgotten(key, made):  # an object older than its customer's forget
        return Refreshed(object_id, None, "forgotten")
    await producer.publish(orjson.dumps(event), key=key, headers=headers, created=made)
    return Refreshed(object_id, event_id, "written")
