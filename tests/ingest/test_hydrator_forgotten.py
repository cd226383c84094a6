"""A hydrator writes no snapshot of a customer forgotten after the event it completes: right
before writing it reads the keys topic to its end, and passes as `forgotten` a source event
whose key is gone, and one whose snapshot names a customer forgotten after the source event
came to be (a notification about an object no row linked to them when they were forgotten:
its own key lives on). Stripe still has the objects: a snapshot would put the customer back
into the log under a new key. A notification created after the forget is hydrated (the
customer came back: a new key). Real Kafka and stripe-mock; the hydrator's steps driven
in-process, so the forget falls exactly between opening the events and writing their
snapshots, before the hydrator's keyring follows the keys topic."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from entitled.keyring import Keyring
from entitled.settings import Settings
from ingest.hydrate.hydrator import Hydrator
from ingest.keys import routing_key
from ingest.stripe_api import StripeApi
from tests.ingest.thin_events import notification
from tests.support.kafka import publish, read_topic
from tests.support.stripe_mock import API_KEY


async def test_a_hydrator_writes_no_snapshot_of_a_customer_forgotten_meanwhile(
    settings: Settings, stripe_mock: str
) -> None:
    subscription = "v1.customer.subscription.updated"
    gone = notification(subscription, "sub_forgotten", "subscription")
    unlinked = notification(subscription, "sub_unlinked", "subscription")
    later = datetime.now(UTC) + timedelta(minutes=10)  # after the forget below
    back = notification(subscription, "sub_back", "subscription", created=later)
    publish(settings, [gone, unlinked, back])
    records = {
        dict(r.headers)["stripe-event-id"]: r for r in await read_topic(settings, opened=False)
    }
    s = dataclasses.replace(settings, stripe_api_key=API_KEY, stripe_api_base=stripe_mock)
    api = StripeApi(API_KEY, base=stripe_mock, rps=50)
    hydrator = Hydrator(s, api=api)
    await hydrator._producer.start()
    try:
        # all opened now, while their keys are live
        jobs = [await hydrator._job_of(records[e["id"].encode()]) for e in (gone, unlinked, back)]
        assert None not in jobs
        # the customer stripe-mock puts on every subscription it answers
        customer = (await api.retrieve("/v1/subscriptions/sub_unlinked")).obj["customer"]
        async with Keyring(s) as other:  # another process forgets meanwhile: one subject
            # linked to the customer (its key tombstoned) and the customer themselves
            # (`sub_unlinked` was never folded, so no row linked it to them)
            assert len(await other.forget([routing_key(gone), customer])) == 1
        outcomes = [await hydrator._fetch_and_write(job) for job in jobs if job is not None]
    finally:
        await hydrator._producer.stop()
        await api.close()
    assert outcomes == ["forgotten", "forgotten", "hydrated"]
    written = [dict(r.headers).get("hydrated-from") for r in await read_topic(s, opened=False)]
    assert [w for w in written if w is not None] == [back["id"].encode()]
