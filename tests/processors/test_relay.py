"""The change feed end to end: a worker folds a random history, the relay publishes every
change to Kafka; across a worker SIGKILL and a relay SIGKILL no change is lost, none gets a
new id, and each customer's changes arrive in order."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from entitled.kafka import client_options
from entitled.settings import Settings
from launcher.services._process import run_async
from launcher.workload import Workload
from tests.support.db import caught_up, query
from tests.support.kafka import publish
from tests.support.polling import wait_until
from tests.support.processes import Procs


def _consume(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Everything on `topic` now, with the change-id header checked against the body."""

    async def go() -> list[tuple[int, int, bytes | None, bytes, dict[str, bytes]]]:
        consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            out = []
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(timeout_ms=1000)
                for tp, records in batch.items():
                    out += [
                        (tp.partition, r.offset, r.key, r.value, dict(r.headers)) for r in records
                    ]
            return out
        finally:
            await consumer.stop()

    docs = []
    for partition, offset, key, value, headers in run_async(go):
        doc = orjson.loads(value)
        assert headers["change-id"] == str(doc["id"]).encode()
        assert key == doc["customer"].encode()
        docs.append({**doc, "_partition": partition, "_offset": offset})
    return docs


def _table(settings: Settings) -> dict[int, tuple[Any, ...]]:
    try:
        rows = query(
            settings,
            "SELECT id, customer, groups_after, movies_after, published_at IS NOT NULL"
            " FROM entitled.changes ORDER BY id",
        )
    except psycopg.errors.UndefinedTable:  # the worker has not migrated yet
        return {}
    return {r[0]: r[1:] for r in rows}


def test_every_change_reaches_kafka_once_and_in_order(settings: Settings, procs: Procs) -> None:
    topic = f"{settings.topic}.changes"
    env = {"ENTITLED_CHANGES_TOPIC": topic}
    events = list(Workload(customers=440, seed=11).events())
    assert len(events) >= 2000
    half = len(events) // 2
    worker = procs.spawn("worker", **env)
    relay = procs.spawn("relay", **env)
    publish(settings, events[:half])
    wait_until(lambda: len(_table(settings)) > 20, 90, "changes to be written", procs)
    worker.kill()  # crashes mid-stream
    relay.kill()
    publish(settings, events[half:])
    procs.spawn("worker", **env)
    procs.spawn("relay", **env)
    wait_until(lambda: caught_up(settings), 120, "the worker to reach the log end", procs)
    wait_until(
        lambda: all(published for *_, published in _table(settings).values()),
        60,
        "the relay to publish every change",
        procs,
    )
    table = _table(settings)
    seen = _consume(settings, topic)
    by_id: dict[int, dict[str, Any]] = {}
    for doc in seen:
        first = by_id.setdefault(doc["id"], doc)
        # a change published twice (relay killed between ack and mark) is the same change
        assert {k: v for k, v in first.items() if not k.startswith("_")} == {
            k: v for k, v in doc.items() if not k.startswith("_")
        }
    assert set(by_id) == set(table), "every change row on the topic, nothing else"
    for change_id, (customer, groups, movies, _) in table.items():
        doc = by_id[change_id]
        assert (doc["customer"], doc["groups"]["after"], doc["movies"]["after"]) == (
            customer,
            groups,
            movies,
        )
    order: dict[str, list[int]] = defaultdict(list)
    for doc in sorted(seen, key=lambda d: (d["_partition"], d["_offset"])):
        if doc["id"] not in order[doc["customer"]]:
            order[doc["customer"]].append(doc["id"])
    assert all(ids == sorted(ids) for ids in order.values()), "per customer, in id order"
    # the feed tells the whole story: each customer's last change is what they hold now
    final = dict(
        (c, (g, m))
        for c, g, m in query(
            settings, "SELECT customer, groups, movie_ids FROM live.customer_entitlements"
        )
    )
    for customer, ids in order.items():
        last = by_id[ids[-1]]
        assert (last["groups"]["after"], last["movies"]["after"]) == final[customer]
    # before and after chain: each change starts where the previous one of its customer ended
    for ids in order.values():
        for a, b in itertools.pairwise(ids):
            assert by_id[a]["groups"]["after"] == by_id[b]["groups"]["before"]
            assert by_id[a]["movies"]["after"] == by_id[b]["movies"]["before"]
