"""Backfill against a real localstripe process into a real Kafka topic."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import replace

import orjson
import pytest

from entitled.settings import Settings
from ingest.backfill.listing import backfill
from ingest.cursors import CursorStore
from ingest.stripe_api import StripeApi
from tests.ingest.stripe_seed import LOCALSTRIPE_LISTS, Seeded, seed
from tests.support.kafka import read_topic
from tests.support.keys import MASTER_KEY
from tests.support.localstripe import API_KEY
from tests.support.localstripe import localstripe as localstripe


@pytest.fixture
def stripe_settings(settings: Settings, localstripe: str) -> Settings:
    return replace(settings, stripe_api_key=API_KEY, stripe_api_base=localstripe)


def _headers(record: object) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}  # type: ignore[attr-defined]


async def test_one_snapshot_per_object_with_key_and_source(stripe_settings: Settings) -> None:
    seeded: Seeded = await asyncio.to_thread(
        seed, stripe_settings.stripe_api_base, API_KEY, customers=2
    )
    before = int(time.time())
    result = await backfill(stripe_settings, lists=LOCALSTRIPE_LISTS, progress=False)
    after = int(time.time())
    assert not result.interrupted

    records = await read_topic(stripe_settings)
    events = [orjson.loads(r.value) for r in records]
    by_object = Counter(e["data"]["object"]["id"] for e in events)
    expected = {obj_id for ids in seeded.ids.values() for obj_id in ids}
    assert set(by_object) == expected
    assert all(count == 1 for count in by_object.values())
    for record, event in zip(records, events, strict=True):
        obj = event["data"]["object"]
        headers = _headers(record)
        assert headers["source"] == "backfill"
        assert headers["stripe-event-id"] == event["id"]
        assert event["id"].startswith("evt_backfill_")
        assert event["request"] == {"id": None, "idempotency_key": None}
        # stamped with the time it was read, not the object's own creation
        assert before <= event["created"] <= after
        assert record.key.decode() == seeded.customer_of.get(obj["id"], obj["id"])
    types = {e["data"]["object"]["id"]: e["type"] for e in events}
    assert {types[i] for i in seeded.ids["products"]} == {"product.updated"}
    assert {types[i] for i in seeded.ids["subscriptions"]} == {"customer.subscription.updated"}
    assert {types[i] for i in seeded.ids["payment_intents"]} == {"payment_intent.succeeded"}
    assert result.lists["products"].written == 3

    # Every read is a new snapshot (issue 19, point 2): a second run logs every object again,
    # under new ids, so an object back in an earlier state is never taken for a duplicate.
    again = await backfill(stripe_settings, lists=LOCALSTRIPE_LISTS, progress=False)
    assert not again.interrupted
    both = await read_topic(stripe_settings)
    assert len(both) == 2 * len(events)
    assert len({_headers(r)["stripe-event-id"] for r in both}) == 2 * len(events)


async def test_interrupted_backfill_resumes_from_cursors(stripe_settings: Settings) -> None:
    await asyncio.to_thread(seed, stripe_settings.stripe_api_base, API_KEY, customers=3)
    lists = ("products", "customers", "subscriptions")  # 3 objects each: 3 pages of 1

    def api() -> StripeApi:
        return StripeApi(API_KEY, base=stripe_settings.stripe_api_base, rps=1000)

    first_api = api()
    first = await backfill(
        stripe_settings, lists=lists, page_size=1, max_pages=4, progress=False, api=first_api
    )
    await first_api.close()
    assert first.interrupted
    assert len(first_api.log.pages) == 4

    store = CursorStore(stripe_settings)
    saved = await store.load()
    assert sum(c.pages for c in saved.values()) == 4
    assert all(c.starting_after for c in saved.values())

    second_api = api()
    second = await backfill(
        stripe_settings, lists=lists, page_size=1, progress=False, api=second_api
    )
    await second_api.close()
    assert not second.interrupted
    # No list started over: every list with a cursor resumed after it, and the pages of
    # both runs add up to one full walk (3 objects at 1 per page: 3 pages per list).
    for name, cursor in saved.items():
        assert (name, None) not in {(p.rsplit("/", 1)[-1], s) for p, s in second_api.log.pages}
        assert second.lists[name].resumed_after == cursor.starting_after
    assert len(first_api.log.pages) + len(second_api.log.pages) == 3 * len(lists)

    records = await read_topic(stripe_settings)
    objects = {orjson.loads(r.value)["data"]["object"]["id"] for r in records}
    assert len(objects) == 9
    assert len(records) == 9  # no page written twice
    assert await store.load() == {}  # a finished run clears its cursors


async def test_restart_ignores_cursors_and_missing_lists_are_skipped(
    stripe_settings: Settings,
) -> None:
    await asyncio.to_thread(seed, stripe_settings.stripe_api_base, API_KEY, customers=1)
    first = await backfill(
        stripe_settings, lists=("products",), page_size=1, max_pages=1, progress=False
    )
    assert first.interrupted
    restarted = await backfill(
        stripe_settings,
        lists=("products", "prices", "checkout_sessions"),
        page_size=1,
        restart=True,
        progress=False,
    )
    assert restarted.lists["products"].resumed_after is None
    assert restarted.lists["products"].written == 3
    assert restarted.lists["prices"].unavailable  # localstripe has no /v1/prices
    assert restarted.lists["checkout_sessions"].unavailable
    assert not restarted.interrupted


def test_cli_backfill_and_reconcile(stripe_settings: Settings) -> None:
    from click.testing import CliRunner

    from launcher.cli import main

    assert stripe_settings.stripe_api_base and stripe_settings.kafka_bootstrap_servers
    seed(stripe_settings.stripe_api_base, API_KEY, customers=1)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": stripe_settings.kafka_bootstrap_servers,
        "ENTITLED_TOPIC": stripe_settings.topic,
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": stripe_settings.stripe_api_base,
        "ENTITLED_MASTER_KEY": MASTER_KEY,
    }
    runner = CliRunner()
    lists = ",".join(LOCALSTRIPE_LISTS)
    out = runner.invoke(main, ["backfill", "--lists", lists, "--rps", "200"], env=env)
    assert out.exit_code == 0, out.output
    assert "products: 1 pages, 3 objects, 3 written" in out.output
    out = runner.invoke(main, ["reconcile"], env=env)
    assert out.exit_code == 0, out.output
    assert "already present 0" in out.output
    out = runner.invoke(main, ["reconcile"], env=env)
    assert out.exit_code == 0, out.output
    assert out.output.strip().endswith("written 0")
    out = runner.invoke(main, ["backfill", "--lists", "nonsense"], env=env)
    assert out.exit_code == 2
