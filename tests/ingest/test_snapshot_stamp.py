"""A snapshot is stamped with the second its request was SENT (issue 19, point 1): Stripe read
the object at or after that second. Stamped when the answer arrived, a read of an
`incomplete` subscription whose answer crossed a second boundary beat the activation webhook
of the second it was sent in, and the paying customer had no access until the renewal.

A real HTTP Stripe stand-in that answers slowly, real Kafka, the real fold on Postgres."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiohttp import web

from entitled.settings import Settings
from ingest.keys import event_headers, routing_key
from ingest.producer import EventProducer
from ingest.refresh.fetch import refresh
from ingest.stripe_api import StripeApi
from ingest.summary import complete
from launcher.stripe import events as se
from tests.support.db import entitlements
from tests.support.infold import fold_log
from tests.support.kafka import publish, read_topic


@asynccontextmanager
async def slow_stripe(
    objects: dict[str, Any], on_request: Any = None
) -> AsyncIterator[tuple[str, list[int]]]:
    """Serve `objects` by path; each answer leaves after the next second boundary. Yields
    (base URL, the second each request arrived)."""
    seconds: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        now = time.time()
        seconds.append(int(now))
        if on_request is not None:
            await on_request(int(now))
        await asyncio.sleep(int(now) + 1.1 - time.time())  # answer in the next second
        return web.json_response(objects[request.path])

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seconds
    finally:
        await runner.cleanup()


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
        async with slow_stripe(objects, payment_confirms) as (base, seconds):
            api = StripeApi("sk_test_slow", base=base, rps=100)
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
    assert snapshot["created"] == seconds[0]  # the second the request was sent

    await fold_log(settings)
    assert entitlements(settings)[customer][0] == ["action"]


async def test_a_listed_summary_is_stamped_with_its_first_request() -> None:
    """Lists read over several pages (the summary completion, the features mirror) describe
    no moment before their first request: they carry its second."""
    path = "/v1/entitlements/active_entitlements"
    page = {"object": "list", "data": [{"id": "ent_1", "lookup_key": "group:a"}], "has_more": False}
    async with slow_stripe({path: page}) as (base, seconds):
        api = StripeApi("sk_test_slow", base=base, rps=100)
        try:
            got = await complete(api, "cus_x", {"customer": "cus_x"})
        finally:
            await api.close()
    assert got.read_at == seconds[0]
