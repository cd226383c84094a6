"""Thin event notifications through the webhook endpoint (real uvicorn, real Kafka)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from launcher.stripe import events as se
from tests.ingest.thin_events import notification
from tests.support.kafka import end_offsets, read_topic
from tests.support.serve import Running

SECRET = "whsec_test_secret"


def _signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"Stripe-Signature": se.sign_header(body, secret), "Content-Type": "application/json"}


async def test_notification_is_logged_byte_for_byte(ingest_server: Running) -> None:
    thin = notification(
        "v1.customer.subscription.updated", "sub_thin1", "subscription", context="acct_c1"
    )
    # key order and spacing as Stripe chose them must survive
    body = b'{"zz": 0,  ' + orjson.dumps(thin)[1:]
    async with httpx.AsyncClient(base_url=ingest_server.url) as client:
        r = await client.post("/webhooks/stripe", content=body, headers=_signed(body))
    assert r.status_code == 200, r.text
    assert r.json() == {"received": True, "id": thin["id"]}
    (record,) = await read_topic(ingest_server.settings)
    assert record.value == body
    assert record.key == b"sub_thin1"
    headers = dict(record.headers)
    assert headers["stripe-event-id"] == thin["id"].encode()
    assert headers["stripe-event-type"] == b"v1.customer.subscription.updated"
    assert headers["stripe-api-version"] == b""
    assert headers["stripe-account"] == b"acct_c1"
    assert headers["source"] == b"webhook"


async def test_customer_notification_keyed_by_the_customer(ingest_server: Running) -> None:
    thin = notification("v1.customer.updated", "cus_thin2", "customer")
    snapshot = se.event(
        "customer.subscription.created",
        se.subscription("sub_x", customer="cus_thin2", items=[("price_a", "prod_a")]),
    )
    async with httpx.AsyncClient(base_url=ingest_server.url) as client:
        for event in (thin, snapshot):
            body = orjson.dumps(event)
            r = await client.post("/webhooks/stripe", content=body, headers=_signed(body))
            assert r.status_code == 200, r.text
    records = await read_topic(ingest_server.settings)
    assert [r.key for r in records] == [b"cus_thin2", b"cus_thin2"]
    assert len({r.partition for r in records}) == 1


def _without(event: dict[str, Any], *path: str) -> dict[str, Any]:
    out = orjson.loads(orjson.dumps(event))
    target = out
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return out


async def test_malformed_signed_notifications_are_logged_forged_ones_refused(
    ingest_server: Running,
) -> None:
    """A signed body is never refused for its content (issue 19, point 10): a notification
    the stripe library cannot read is logged as received, answered 200 and counted; the
    hydrator and the fold read what they can of it. A forged one is still refused."""
    good = notification("v1.invoice.paid", "in_1", "invoice")
    cases: list[tuple[str, dict[str, Any]]] = [
        ("v1 type without related_object", _without(good, "related_object")),
        ("created as a number", {**good, "created": 1700000000}),
        ("created not a date", {**good, "created": "yesterday"}),
        ("related id not a string", {**good, "related_object": {"id": 5}}),
        ("no related url", _without(good, "related_object", "url")),
        ("no type", _without(good, "type")),
    ]
    async with httpx.AsyncClient(base_url=ingest_server.url) as client:
        body = orjson.dumps(good)
        forged = await client.post(
            "/webhooks/stripe", content=body, headers=_signed(body, "whsec_other")
        )
        assert forged.status_code == 400
        assert sum((await end_offsets(ingest_server.settings)).values()) == 0
        statuses = {}
        for case, event in cases:
            body = orjson.dumps(event)
            r = await client.post("/webhooks/stripe", content=body, headers=_signed(body))
            statuses[case] = r.status_code
        metrics = (await client.get("/metrics")).text
    assert statuses == {case: 200 for case, _ in cases}
    assert sum((await end_offsets(ingest_server.settings)).values()) == len(cases)
    assert 'entitled_ingest_requests_total{outcome="accepted_malformed"} 6.0' in metrics
