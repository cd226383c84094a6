"""A hydrator that opened an event before its customer was forgotten writes no snapshot of
them after: right before writing it reads the keys topic to its end, and a source event
whose key is gone is passed as `forgotten` (Stripe still has the object: a snapshot would
put the customer back into the log under a new key). Real Kafka and stripe-mock; the
hydrator's steps driven in-process, so the forget falls exactly between opening the event
and writing its snapshot, before the hydrator's keyring follows the keys topic."""

from __future__ import annotations

import dataclasses

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
    gone = notification("v1.customer.subscription.updated", "sub_forgotten", "subscription")
    kept = notification("v1.customer.subscription.updated", "sub_kept", "subscription")
    publish(settings, [gone, kept])
    records = {
        dict(r.headers)["stripe-event-id"]: r for r in await read_topic(settings, opened=False)
    }
    s = dataclasses.replace(settings, stripe_api_key=API_KEY, stripe_api_base=stripe_mock)
    api = StripeApi(API_KEY, base=stripe_mock, rps=50)
    hydrator = Hydrator(s, api=api)
    await hydrator._producer.start()
    try:
        # both opened now, while their keys are live
        jobs = [await hydrator._job_of(records[e["id"].encode()]) for e in (gone, kept)]
        assert None not in jobs
        async with Keyring(s) as other:  # another process forgets one subject meanwhile
            assert len(await other.forget([routing_key(gone)])) == 1
        outcomes = [await hydrator._fetch_and_write(job) for job in jobs if job is not None]
    finally:
        await hydrator._producer.stop()
        await api.close()
    assert outcomes == ["forgotten", "hydrated"]
    written = [dict(r.headers).get("hydrated-from") for r in await read_topic(s, opened=False)]
    assert [w for w in written if w is not None] == [kept["id"].encode()]
