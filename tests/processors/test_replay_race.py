"""Two replay jobs racing on one object whose events are split over two partitions (issue 10,
point 6), through real Kafka, Postgres and `entitled` processes.

A payment intent created before a customer is attached is keyed by its own id; its later
events are keyed by the customer, so they usually sit in another partition. `replay --jobs 2`
folds the partitions in two processes, each in READ COMMITTED: when job X loads the object
(absent), job Y commits the newer snapshot, and X then writes the older one, an unguarded
upsert puts the older snapshot over the newer one. Only a version-guarded upsert in SQL
(`ON CONFLICT ... DO UPDATE ... WHERE` the stored stamp is older) prevents it.

Making the race likely: thousands of such objects, every record published in a random order,
so that each partition holds a random mix of older and newer events and every pair of batches
the two jobs fold at the same moment shares objects, in both directions (older event in job
0's partitions for some objects, in job 1's for others), whichever job starts first.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from entitled.settings import Settings
from ingest.keys import event_headers, routing_key
from launcher.services._process import run_async
from launcher.stripe import events as se
from processors.rebuild import partition_of
from tests.support.db import query
from tests.support.examples import sized
from tests.support.processes import Procs

# Thousands make the race likely in every pair of batches; `make test-long` folds 40,000.
OBJECTS = int(sized(10_000, 40_000))
PARTITIONS = 8  # the `topic` fixture's
MIRRORED = ("id", "customer", "refs", "record", "event_id")


def _split_object(n: int, rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
    """A payment intent created with no customer (older) and paid by a customer (newer)."""
    pi_id, cus = f"pi_race{n:06d}", f"cus_race{n:06d}"
    created = 1_700_000_000 + rng.randrange(1000)
    older = se.payment_intent(pi_id, customer=cus, movie_id="m1", status="requires_payment_method")
    older["customer"] = None  # not attached yet: keyed by the payment intent's own id
    newer = se.payment_intent(pi_id, customer=cus, movie_id="m1", status="succeeded")
    return (
        se.event("payment_intent.created", older, created=created),
        se.event("payment_intent.succeeded", newer, created=created + 60),
    )


def _publish_fast(settings: Settings, events: Sequence[Mapping[str, Any]]) -> None:
    """Write events as the ingest does (raw bytes, key, headers), in one pipelined burst:
    one awaited acknowledgement per event would take minutes for this many."""

    async def go() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", linger_ms=20
        )
        await producer.start()
        try:
            sent = [
                await producer.send(
                    settings.topic,
                    se.encode(e),
                    key=routing_key(e).encode(),
                    headers=event_headers(e, source="webhook", received_at=time.time()),
                )
                for e in events
            ]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    run_async(go)


def _rows(settings: Settings, schema: str) -> dict[tuple[str, str], tuple[Any, ...]]:
    """Every mirrored row of `schema` with its stamp columns, by (table, id)."""
    out: dict[tuple[str, str], tuple[Any, ...]] = {}
    tables = ("products", "prices", "customers", "subscriptions", "purchases", "charges")
    for table in (*tables, "refunds"):
        for row in query(settings, f"SELECT {', '.join(MIRRORED)} FROM {schema}.{table}"):
            out[(table, row[0])] = row
    return out


def test_two_replay_jobs_keep_the_newest_snapshot_of_a_split_object(
    settings: Settings, procs: Procs
) -> None:
    rng = random.Random(6)
    pairs = [_split_object(n, rng) for n in range(OBJECTS)]
    jobs_of = {p: p % 2 for p in range(PARTITIONS)}  # `--jobs 2` takes partitions[j::2]
    crossing = sum(
        1
        for older, newer in pairs
        if jobs_of[partition_of(routing_key(older), PARTITIONS)]
        != jobs_of[partition_of(routing_key(newer), PARTITIONS)]
    )
    assert crossing > OBJECTS // 3, "the ids must spread the two events over both jobs"
    events = [e for pair in pairs for e in pair]
    rng.shuffle(events)
    _publish_fast(settings, events)

    # one job, one process: no race possible
    _replay(procs, "--jobs", "1")
    one_job = _rows(settings, "entitled_v2")
    _replay(procs, "--jobs", "2")
    two_jobs = _rows(settings, "entitled_v3")

    newest = {newer["data"]["object"]["id"]: newer for _older, newer in pairs}
    for name, rows in (("one job", one_job), ("two jobs", two_jobs)):
        stale = sorted(p for p, e in newest.items() if rows[("purchases", p)][4] != e["id"])
        assert stale == [], f"{name}: {len(stale)} of {OBJECTS} rows are older: {stale[:5]}"
    assert two_jobs == one_job
    paid = query(
        settings, "SELECT count(*) FROM entitled_v3.customer_entitlements WHERE movie_ids = '{m1}'"
    )
    assert paid == [(OBJECTS,)]


def _replay(procs: Procs, *args: str) -> str:
    """A replay of the whole log in its own process (swapped in: no live worker runs here,
    and a dry run builds only as far as the live version stands)."""
    p = procs.spawn("replay", "--yes", *args, name="replay")
    assert p.popen is not None
    p.popen.wait(600)
    assert p.popen.returncode == 0, p.tail()
    return p.tail(50)
