"""A snapshot is stamped with the second its request was SENT (issue 19, point 1): Stripe read
the object at or after that second. Stamped when the answer arrived, a read of an
`incomplete` subscription whose answer crossed a second boundary beat the activation webhook
of the second it was sent in, and the paying customer had no access until the renewal.

A real HTTP Stripe stand-in that answers slowly, real Kafka, the real fold on Postgres."""

from __future__ import annotations

import time

import orjson

from entitled.settings import Settings
from ingest.keys import event_headers, routing_key
from ingest.producer import EventProducer
from ingest.refresh.fetch import refresh
from ingest.stripe_api import StripeApi
from ingest.summary import complete
from launcher.stripe import events as se
from tests.support.db import entitlements
from tests.support.fake_stripe import fake_stripe
from tests.support.infold import fold_log
from tests.support.kafka import publish, read_topic


async def test_a_slow_read_never_beats_the_activation_sent_while_it_was_on_its_way(
    settings: Settings,
) -> None:
    customer = "cus_slowread"
    publish(settings, [se.event("product.created", se.product("prod_sr", groups="action"))])
    incomplete = se.subscription(
        "sub_slowread", customer=customer, items=[("price_sr", "prod_sr")], status="incomplete"
    )
    active = {**incomplete, "status": "active"}
    producer = EventProducer(settings)
    await producer.start()

    async def payment_confirms(second: int) -> None:
        # Stripe read the subscription while it was incomplete; the payment confirms in the
        # same second, and the webhook saying so is logged before the read's answer lands.
        webhook = se.event(
            "customer.subscription.updated",
            active,
            created=second,
            previous_attributes={"status": "incomplete"},
        )
        await producer.publish(
            se.encode(webhook),
            key=routing_key(webhook),
            headers=event_headers(webhook, source="webhook", received_at=time.time()),
        )

    try:
        objects = {"/v1/subscriptions/sub_slowread": incomplete}
        async with fake_stripe(objects, next_second=True, on_request=payment_confirms) as fake:
            api = StripeApi("sk_test_slow", base=fake.url, rps=100)
            try:
                [done] = await refresh(settings, ["sub_slowread"], api=api, producer=producer)
            finally:
                await api.close()
    finally:
        await producer.stop()
    assert done.outcome == "written"

    records = [r for r in await read_topic(settings) if r.key == customer.encode()]
    assert [dict(r.headers)["source"] for r in records] == [b"webhook", b"refresh"]
    snapshot = orjson.loads(records[1].value)
    assert snapshot["created"] == fake.seconds[0]  # the second the request was sent

    await fold_log(settings)
    assert entitlements(settings)[customer][0] == ["action"]


async def test_a_listed_summary_is_stamped_with_its_first_request() -> None:
    """Lists read over several pages (the summary completion, the features mirror) describe
    no moment before their first request: they carry its second."""
    path = "/v1/entitlements/active_entitlements"
    page = {"object": "list", "data": [{"id": "ent_1", "lookup_key": "group:a"}], "has_more": False}
    async with fake_stripe({path: page}, next_second=True) as fake:
        api = StripeApi("sk_test_slow", base=fake.url, rps=100)
        try:
            got = await complete(api, "cus_x", {"customer": "cus_x"})
        finally:
            await api.close()
    assert got.read_at == fake.seconds[0]
