"""`entitled backfill`: list Stripe objects and write each into the log as a snapshot event.

Lists are walked concurrently under one rate limit. After every page, once Kafka has
acknowledged all of its events, the list's cursor (the page's last id) is saved in
`<topic>.cursors`, so an interrupted backfill resumes after the last written page; a page
written twice is harmless, as its events have the same ids. Finished lists stay marked
done until the whole run finishes, then all cursors are cleared, so the next run starts
afresh. `restart=True` ignores saved cursors.

A list endpoint the server does not have (404 on its first page, as `/v1/prices` and
`/v1/checkout/sessions` on localstripe) is reported as unavailable and skipped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import stripe
from tqdm import tqdm

from entitled.settings import Settings
from entitled.topics import ensure_event_topic
from ingest.cursors import Cursor, CursorStore
from ingest.features import FeaturesResult, mirror_features
from ingest.keys import event_headers, object_created_at, routing_key
from ingest.producer import EventProducer
from ingest.snapshots import DEFAULT_LISTS, LISTS, ListSpec, snapshot_event
from ingest.stripe_api import StripeApi


@dataclass
class ListResult:
    """What backfill did with one list in this run."""

    name: str
    pages: int = 0
    objects: int = 0
    written: int = 0
    skipped: int = 0  # objects with no event type for their state (open checkout sessions)
    forgotten: int = 0  # objects made before their customer was forgotten: not written
    resumed_after: str | None = None
    already_done: bool = False
    unavailable: bool = False
    finished: bool = False


@dataclass
class BackfillResult:
    lists: dict[str, ListResult] = field(default_factory=dict)
    interrupted: bool = False
    features: FeaturesResult | None = None  # products' features (with features=True)


class _PageBudget:
    """Stops the run after `limit` pages in all: how tests interrupt a backfill."""

    def __init__(self, limit: int | None) -> None:
        self.left = limit

    def take(self) -> bool:
        if self.left is None:
            return True
        if self.left <= 0:
            return False
        self.left -= 1
        return True


async def backfill(
    settings: Settings,
    *,
    lists: Iterable[str] = DEFAULT_LISTS,
    restart: bool = False,
    rps: float | None = None,
    page_size: int = 100,
    api_version: str | None = None,
    max_pages: int | None = None,
    progress: bool = True,
    api: StripeApi | None = None,
    features: bool = False,
) -> BackfillResult:
    """Walk `lists` and write their objects as snapshot events; see the module docstring.

    `max_pages` stops the run after that many pages in all (an interruption, for tests);
    `api` may be passed to observe its request log. `features` then lists every product's
    Stripe Entitlements features (`ingest.features`; the CLI's default).
    """
    specs = [LISTS[name] for name in lists]
    own_api = api is None
    if api is None:
        api = StripeApi.from_settings(settings, rps=rps, api_version=api_version)
    assert settings.kafka_bootstrap_servers, "kafka_bootstrap_servers is not set"
    await ensure_event_topic(settings)
    producer = EventProducer(settings)
    cursors = CursorStore(settings)
    result = BackfillResult()
    budget = _PageBudget(max_pages)
    try:
        await producer.start()
        await cursors.start()
        saved = {} if restart else await cursors.load()
        async with asyncio.TaskGroup() as tasks:
            for position, spec in enumerate(specs):
                outcome = result.lists[spec.name] = ListResult(spec.name)
                bar = tqdm(desc=spec.name, unit="obj", position=position, disable=not progress)
                walk = _walk(
                    spec,
                    saved.get(spec.name),
                    api,
                    producer,
                    cursors,
                    budget,
                    outcome,
                    page_size=page_size,
                    bar=bar,
                )
                tasks.create_task(walk)
        result.interrupted = not all(r.finished for r in result.lists.values())
        if not result.interrupted:
            for spec in specs:
                await cursors.clear(spec.name)
            if features:
                result.features = await mirror_features(settings, api, producer, source="backfill")
    finally:
        await cursors.stop()
        await producer.stop()
        if own_api:
            await api.close()
    return result


async def _walk(
    spec: ListSpec,
    cursor: Cursor | None,
    api: StripeApi,
    producer: EventProducer,
    cursors: CursorStore,
    budget: _PageBudget,
    outcome: ListResult,
    *,
    page_size: int,
    bar: tqdm[Any],
) -> None:
    with bar:
        if cursor is not None and cursor.done:
            outcome.already_done = outcome.finished = True
            return
        starting_after = cursor.starting_after if cursor else None
        pages = cursor.pages if cursor else 0
        outcome.resumed_after = starting_after
        while True:
            if not budget.take():
                return
            try:
                page = await api.page(spec.path, spec.params, starting_after, page_size)
            except stripe.StripeError as exc:
                if exc.http_status == 404 and starting_after is None:
                    outcome.unavailable = outcome.finished = True
                    return
                raise
            outcome.pages += 1
            pages += 1
            events = []
            for obj in page.data:
                if spec.name == "subscriptions":
                    await _complete_items(api, obj)
                event = snapshot_event(
                    spec, obj, api_version=page.api_version, read_at=page.read_at
                )
                if event is None:
                    outcome.skipped += 1
                else:
                    events.append(event)
            await producer.catch_up()  # forgets made until now count for this page
            kept = [
                e for e in events if not producer.forgotten(routing_key(e), object_created_at(e))
            ]
            outcome.forgotten += len(events) - len(kept)
            events = kept
            await asyncio.gather(*(_publish(producer, event) for event in events))
            outcome.objects += len(page.data)
            outcome.written += len(events)
            bar.update(len(page.data))
            done = not page.has_more or not page.data
            if page.data:
                starting_after = page.data[-1]["id"]
            await cursors.save(spec.name, Cursor(starting_after, done=done, pages=pages))
            if done:
                outcome.finished = True
                return


async def _publish(producer: EventProducer, event: Mapping[str, Any]) -> None:
    headers = event_headers(event, source="backfill", received_at=time.time())
    await producer.publish(
        orjson.dumps(event),
        key=routing_key(event),
        headers=headers,
        created=object_created_at(event),  # an object older than its customer's forget
    )


async def _complete_items(api: StripeApi, subscription: dict[str, Any]) -> None:
    """A list embeds a subscription's first items only; fetch the rest so the snapshot is whole."""
    items = subscription.get("items")
    if not isinstance(items, dict) or not items.get("has_more"):
        return
    data = items.setdefault("data", [])
    params = {"subscription": subscription["id"]}
    async for page in api.pages("/v1/subscription_items", params, starting_after=data[-1]["id"]):
        data.extend(page.data)
    items["has_more"] = False
