"""Every read is a new snapshot (issue 19, point 2). With ids derived from the object's
state, an object back in a state it had before (quantity 1 -> 0 -> 1, the last webhook
lost) was re-read under an id already folded: dropped as a duplicate, the drift stayed for
ever, and `POST /v1/refresh` answered with that already-folded id.

A Stripe stand-in on real HTTP, real Kafka, the real fold on Postgres."""

from __future__ import annotations

import asyncio
import time

from entitled.settings import Settings
from ingest.refresh.fetch import refresh
from ingest.stripe_api import StripeApi
from launcher.stripe import events as se
from tests.support.db import active_schema, entitlements, query
from tests.support.fake_stripe import fake_stripe
from tests.support.infold import fold_log
from tests.support.kafka import publish


async def test_a_state_that_comes_back_is_healed_by_the_next_read(settings: Settings) -> None:
    customer, path = "cus_comeback", "/v1/subscriptions/sub_comeback"
    one = se.subscription(
        "sub_comeback", customer=customer, items=[("price_cb", "prod_cb")], item_ids=["si_cb"]
    )
    zero = {**one, "items": {**one["items"], "data": [{**one["items"]["data"][0], "quantity": 0}]}}
    publish(
        settings,
        [
            se.event("product.created", se.product("prod_cb", groups="action"), created=1000),
            se.event("customer.subscription.created", one, created=1000),
        ],
    )
    async with fake_stripe({path: one}) as fake:

        async def read() -> str | None:
            api = StripeApi("sk_test_fake", base=fake.url, rps=100)
            try:
                [done] = await refresh(settings, ["sub_comeback"], api=api)
            finally:
                await api.close()
            return done.event_id

        first = await read()  # quantity 1, stamped with this second
        # quantity 0, a second later; then back to 1, and that webhook is lost
        publish(
            settings,
            [se.event("customer.subscription.updated", zero, created=fake.seconds[0] + 1)],
        )
        await fold_log(settings)
        assert entitlements(settings)[customer] == ([], [])
        while time.time() < fake.seconds[0] + 2:  # the clock, not another process
            await asyncio.sleep(0.05)
        second = await read()  # quantity 1 again

    assert second is not None and second != first
    seen = query(
        settings,
        f"SELECT 1 FROM {active_schema(settings)}.processed_events WHERE event_id = %s",
        second,
    )
    assert seen == []  # the id refresh answers is one the fold has not folded yet
    await fold_log(settings)
    assert entitlements(settings)[customer][0] == ["action"]
