"""Stripe's active entitlement summary cut at 10 (`has_more`) is completed by the hydrator,
against stripe-mock (current shapes) and a real Kafka: it lists
`/v1/entitlements/active_entitlements?customer=` to the end and logs the whole summary."""

from __future__ import annotations

import time
from typing import Any

import orjson

from entitled.settings import Settings
from ingest.completion import needed
from ingest.snapshots import hydrate_id
from launcher.services._process import run_async
from launcher.stripe import features as sf
from projections.model.events import parse
from projections.model.views import EntitlementSummaryView
from tests.support.kafka import publish, read_topic
from tests.support.polling import wait_until
from tests.support.processes import Procs
from tests.support.stripe_mock import API_KEY


def test_only_a_summary_cut_short_needs_completing() -> None:
    keys = [f"group:g{i}" for i in range(10)]
    cut = sf.summary_event("cus_big", keys, created=1, has_more=True)
    fetch = needed(cut)
    assert fetch is not None
    assert (fetch.path, fetch.object_id, fetch.reason, dict(fetch.params)) == (
        "/v1/entitlements/active_entitlements",
        "cus_big",
        "summary",
        {"customer": "cus_big"},
    )
    assert needed(sf.summary_event("cus_big", keys, created=1)) is None
    bad = sf.summary_event("../x", keys, created=1, has_more=True)
    assert needed(bad) is None  # never put a non-id into a query


def _hydrated(settings: Settings) -> list[tuple[dict[str, str], dict[str, Any], bytes | None]]:
    records = run_async(lambda: read_topic(settings))
    out = []
    for r in records:
        headers = {k: v.decode() for k, v in r.headers}
        if headers.get("source") == "hydrate" and r.value is not None:
            out.append((headers, orjson.loads(r.value), r.key))
    return out


def test_hydrator_completes_a_summary_with_has_more(
    settings: Settings, procs: Procs, stripe_mock: str
) -> None:
    cut = sf.summary_event(
        "cus_big", [f"group:g{i}" for i in range(10)], created=100, has_more=True
    )
    publish(settings, [cut])
    before = int(time.time())
    procs.spawn(
        "hydrate",
        name="hydrate",
        STRIPE_API_BASE=stripe_mock,
        STRIPE_API_KEY=API_KEY,
        ENTITLED_BACKFILL_RPS="50",
    )
    found = wait_until(lambda: _hydrated(settings), 60, "a completed summary", procs)
    assert len(found) == 1
    headers, event, key = found[0]
    assert headers["hydrated-from"] == cut["id"]
    assert event["id"] == hydrate_id(str(cut["id"]), "cus_big")
    assert event["type"] == "entitlements.active_entitlement_summary.updated"
    assert key == b"cus_big"  # the customer's partition, after the event it completes
    assert event["created"] >= before  # stamped with the read time: newer than the cut one
    listed = event["data"]["object"]["entitlements"]
    assert listed["has_more"] is False and len(listed["data"]) >= 1
    view = parse(orjson.dumps(event), partition=0, offset=0).obj
    assert isinstance(view, EntitlementSummaryView)
    assert (view.id, view.has_more) == ("cus_big", False)
    assert view.lookup_keys == tuple(sorted({e["lookup_key"] for e in listed["data"]}))
