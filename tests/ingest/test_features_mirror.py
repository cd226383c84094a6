"""Products' Stripe Entitlements features into the log, against stripe-mock (current shapes)
and a real Kafka: one snapshot per product whose list changed, none when it did not."""

from __future__ import annotations

import dataclasses

import orjson

from entitled.settings import Settings
from ingest.backfill.listing import backfill
from ingest.features import logged_features, reconcile_features
from ingest.snapshots import features_digest, product_features_event
from launcher.services._process import run_async
from projections.model.events import parse
from projections.model.views import ProductFeaturesView
from tests.support.kafka import publish, read_topic
from tests.support.polling import wait_until
from tests.support.processes import Procs
from tests.support.stripe_mock import API_KEY


def test_reconcile_features_logs_a_changed_list_once(settings: Settings, stripe_mock: str) -> None:
    s = dataclasses.replace(settings, stripe_api_key=API_KEY, stripe_api_base=stripe_mock)
    first = run_async(lambda: reconcile_features(s))
    assert (first.products, first.written, first.unchanged, first.unavailable) == (1, 1, 0, False)
    records = [r for r in run_async(lambda: read_topic(s)) if r.value is not None]
    assert len(records) == 1
    (record,) = records
    headers = dict(record.headers)
    assert headers["stripe-event-type"] == b"product.features.snapshot"
    assert headers["source"] == b"reconcile"
    assert record.value is not None and record.key is not None
    event = parse(record.value, partition=record.partition, offset=record.offset)
    assert isinstance(event.obj, ProductFeaturesView) and event.obj.id == record.key.decode()
    # stripe-mock's one product feature is archived (active: false): it grants nothing
    assert len(orjson.loads(record.value)["data"]["object"]["data"]) == 1
    assert event.obj.lookup_keys == ()
    assert run_async(lambda: logged_features(s)) == {record.key.decode(): event.id}
    # listed again, unchanged: nothing logged
    second = run_async(lambda: reconcile_features(s))
    assert (second.written, second.unchanged) == (0, 1)
    assert len(run_async(lambda: read_topic(s))) == 1


def test_a_list_that_changes_back_gets_a_new_id(settings: Settings) -> None:
    a = product_features_event("prod_1", [{"id": "prodft_a"}], api_version=None, read_at=1)
    b = product_features_event("prod_1", [], api_version=None, read_at=2, previous=str(a["id"]))
    back = product_features_event(
        "prod_1", [{"id": "prodft_a"}], api_version=None, read_at=3, previous=str(b["id"])
    )
    assert features_digest(back["id"]) == features_digest(a["id"]) != features_digest(b["id"])
    assert back["id"] != a["id"]  # the fold would drop a repeated id as a duplicate
    publish(settings, [a, b])
    assert run_async(lambda: logged_features(settings)) == {"prod_1": b["id"]}


def test_backfill_lists_products_then_their_features(settings: Settings, stripe_mock: str) -> None:
    s = dataclasses.replace(settings, stripe_api_key=API_KEY, stripe_api_base=stripe_mock)
    result = run_async(
        lambda: backfill(s, lists=("products",), features=True, progress=False, restart=True)
    )
    assert result.features is not None and (
        result.features.written,
        result.lists["products"].written,
    ) == (1, 1)
    types = [dict(r.headers)["stripe-event-type"] for r in run_async(lambda: read_topic(s))]
    assert sorted(types) == [b"product.features.snapshot", b"product.updated"]


def test_the_hydrator_relists_features_on_a_timer(
    settings: Settings, procs: Procs, stripe_mock: str
) -> None:
    hydrator = procs.spawn(
        "hydrate",
        name="hydrate",
        STRIPE_API_BASE=stripe_mock,
        STRIPE_API_KEY=API_KEY,
        ENTITLED_FEATURES_EVERY_S="0.5",
    )

    def snapshots() -> list[dict[str, bytes]]:
        records = run_async(lambda: read_topic(settings))
        return [
            h
            for h in (dict(r.headers) for r in records)
            if h["stripe-event-type"] == b"product.features.snapshot"
        ]

    wait_until(snapshots, 60, "a features snapshot from the hydrator's timer", procs)
    # later rounds find the list unchanged and log nothing more
    wait_until(
        lambda: "features: 1 products, 0 written" in hydrator.log.read_text(),
        60,
        "a round that found nothing changed",
        procs,
    )
    (only,) = snapshots()
    assert only["source"] == b"reconcile"
