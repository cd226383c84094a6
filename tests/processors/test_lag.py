"""Lag of the fold in events and seconds: the worker's gauges and `entitled status`."""

from __future__ import annotations

import json
import time

import psycopg

from entitled.settings import Settings
from launcher.services._process import run_async
from launcher.stripe import events as se
from processors.lag import HeadCache, received_at, seconds_behind
from processors.metrics import WorkerMetrics
from processors.status import collect
from projections.types import Message
from tests.support.db import caught_up
from tests.support.kafka import publish
from tests.support.polling import metric, wait_until
from tests.support.ports import free_port
from tests.support.processes import Procs


def test_received_at_reads_the_ingest_header_in_any_shape() -> None:
    assert (
        received_at([("source", b"webhook"), ("received-at", b"1700000000.250")]) == 1.70000000025e9
    )
    assert received_at({"received-at": b"12.5"}) == 12.5
    assert received_at([("source", b"webhook")]) is None
    assert received_at([("received-at", b"soon")]) is None
    assert received_at(None) is None


def test_seconds_behind_is_zero_when_caught_up_or_unknown() -> None:
    assert seconds_behind(100.0, caught_up=False, now=103.5) == 3.5
    assert seconds_behind(100.0, caught_up=True, now=103.5) == 0.0
    assert seconds_behind(None, caught_up=False, now=103.5) == 0.0
    assert seconds_behind(104.0, caught_up=False, now=103.5) == 0.0  # clocks a little apart


def test_head_cache_knows_the_first_record_of_each_partition_of_the_last_batch() -> None:
    heads = HeadCache()
    heads.note(
        [
            Message(0, 5, "a", b"", 10.0),
            Message(1, 7, "b", b"", 11.0),
            Message(0, 6, "a", b"", 12.0),
        ]
    )
    assert heads.get(0, 5) == (True, 10.0)
    assert heads.get(1, 7) == (True, 11.0)
    assert heads.get(0, 6) == (False, None)  # not a batch's first record: unknown
    heads.put(0, 6, 12.0)
    assert heads.get(0, 6) == (True, 12.0)


def test_lag_gauges_of_partitions_no_longer_owned_vanish() -> None:
    m = WorkerMetrics()
    m.set_lag({0: (3, 2.5), 1: (0, 0.0)})
    text = m.render().decode()
    assert 'entitled_worker_lag_seconds{partition="0"} 2.5' in text
    assert 'entitled_worker_lag_events{partition="1"} 0.0' in text
    m.set_lag({1: (1, 0.5)})
    text = m.render().decode()
    assert 'partition="0"' not in text
    assert 'entitled_worker_lag_events{partition="1"} 1.0' in text


def _sample(port: int, name: str, partition: int) -> float | None:
    return metric(f"http://127.0.0.1:{port}", f'{name}{{partition="{partition}"}}')


def _wait_caught_up_gauges(port: int, partition: int, procs: Procs) -> None:
    def zero() -> bool:
        return (
            _sample(port, "entitled_worker_lag_seconds", partition) == 0.0
            and _sample(port, "entitled_worker_lag_events", partition) == 0.0
        )

    wait_until(zero, 30, f"partition {partition}'s lag gauges at 0", procs)


def _status_seconds(settings: Settings, partition: int) -> float:
    info = run_async(lambda: collect(settings))
    return float(info["partitions"][partition]["lag_seconds"])


def _subscription(n: int) -> dict[str, object]:
    sub = se.subscription(f"sub_lag{n}", customer="cus_lag", items=[("price_1", "prod_act")])
    return se.event("customer.subscription.created", sub, created=1000 + n)


def test_lag_in_seconds_rises_while_folding_waits_and_falls_to_zero_after(
    settings: Settings, procs: Procs
) -> None:
    port = free_port()
    metrics = {"ENTITLED_WORKER_METRICS_PORT": str(port)}
    worker = procs.spawn("worker", **metrics)
    [(p, _)] = publish(settings, [_subscription(1)])
    wait_until(lambda: caught_up(settings), 90, "the worker to fold the first event", procs)
    _wait_caught_up_gauges(port, p, procs)
    assert _status_seconds(settings, p) == 0.0

    # 1. The worker runs but cannot commit (the test holds its checkpoint row): its gauge
    # shows the waiting event's age, growing.
    assert settings.database_url
    with psycopg.connect(settings.database_url) as hold:
        hold.execute("SELECT * FROM entitled_v1.checkpoints FOR UPDATE")
        sent = time.time()
        publish(settings, [_subscription(2)])
        first = wait_until(
            lambda: _sample(port, "entitled_worker_lag_seconds", p) or 0.0,
            30,
            "the worker's lag in seconds above 0",
            procs,
        )
        assert first <= time.time() - sent + 0.5  # the age of that event, not older
        assert _sample(port, "entitled_worker_lag_events", p) == 1.0
        wait_until(
            lambda: (_sample(port, "entitled_worker_lag_seconds", p) or 0.0) >= first + 1.5,
            30,
            "the worker's lag in seconds to grow",
            procs,
        )
        assert _status_seconds(settings, p) >= first + 1.5
        hold.rollback()
    _wait_caught_up_gauges(port, p, procs)

    # 2. The worker is stopped: `entitled status` shows the unfolded event's age, growing,
    # and 0 once a worker has folded it.
    worker.stop()
    sent = time.time()
    publish(settings, [_subscription(3)])
    first = wait_until(lambda: _status_seconds(settings, p), 30, "status lag above 0", procs)
    assert first <= time.time() - sent + 0.5
    wait_until(lambda: _status_seconds(settings, p) >= first + 1.5, 30, "status lag to grow", procs)
    shown = json.loads(procs.run("status", "--json", name="status").log.read_text())
    assert shown["lag"] == 1 and shown["lag_seconds"] >= first + 1.5
    assert [q["lag_seconds"] > 0 for q in shown["partitions"]] == [
        q["partition"] == p for q in shown["partitions"]
    ]
    procs.spawn("worker", **metrics)
    wait_until(lambda: caught_up(settings), 90, "the restarted worker to catch up", procs)
    assert _status_seconds(settings, p) == 0.0
    shown = json.loads(procs.run("status", "--json", name="status").log.read_text())
    assert shown["lag"] == 0 and shown["lag_seconds"] == 0
    wait_until(
        lambda: _sample(port, "entitled_worker_lag_seconds", p) == 0.0,
        30,
        "the restarted worker's lag gauge at 0",
        procs,
    )
