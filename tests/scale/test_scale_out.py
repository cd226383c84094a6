"""Scale-out: several workers in one consumer group, several ingest processes on one topic,
and a 3-broker cluster losing a broker under load. Real processes, real services.

Each test ends with `audit`: every acked event in the log and applied once, checkpoints
at the log end, and the live tables equal to a fresh replay of the same log.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from entitled.settings import Settings
from launcher import services as svc
from launcher.services import _process as sproc
from launcher.stripe import events as se
from launcher.workload import PACKAGES, Workload
from tests.support.audit import audit
from tests.support.db import caught_up, processed_count
from tests.support.examples import sized
from tests.support.kafka import log_records
from tests.support.keys import MASTER_KEY
from tests.support.load import Poster
from tests.support.polling import wait_until
from tests.support.processes import Procs
from tests.support.system import start_system

SECRET = "whsec_test_secret"


def _with_group_changes(events: list[dict[str, Any]], every: int) -> list[dict[str, Any]]:
    """Insert a change of a package's groups every `every` events, so product events (keyed
    by the product, one partition) race with subscriptions (keyed by customer, others)."""
    out: list[dict[str, Any]] = []
    packages = sorted(PACKAGES)
    for i, e in enumerate(events):
        out.append(e)
        if i and i % every == 0:
            prod = packages[(i // every) % len(packages)]
            groups = PACKAGES[prod] + (",bonus" if (i // every) % 2 else "")
            created = int(e["created"])
            out.append(
                se.event(
                    "product.updated",
                    se.product(prod, groups=groups, created=created),
                    created=created,
                )
            )
    return out


def _assert_audit(settings: Settings, acked: Any, procs: Procs) -> dict[str, Any]:
    result = audit(settings, acked)
    figures = result.figures()
    print(figures)
    assert not result.problems, "\n".join(result.problems) + "\n" + procs.report()
    return figures


def test_killed_worker_partitions_move_and_tables_equal_a_fresh_fold(
    settings: Settings, procs: Procs
) -> None:
    customers = int(sized(350, 700))
    events = _with_group_changes(list(Workload(customers=customers, seed=21).events()), every=150)
    system = start_system(procs, workers=3, api=False, ENTITLED_BATCH_SIZE="50")
    poster = Poster(system.ingest_urls, events, SECRET, rate=250).start()
    # kill one worker in the middle of the load, once the group has folded a good part
    wait_until(lambda: processed_count(settings) > len(events) // 3, 120, "progress", procs)
    victim = system.workers[1]
    victim.kill()
    killed_at = processed_count(settings)
    poster.join(120)
    assert not poster.gave_up and not poster.rejected, dict(poster.statuses)
    wait_until(lambda: caught_up(settings), 120, "the other workers to reach the log end", procs)
    assert killed_at < len(events), "the kill came after the end: it proved nothing"
    assert all(w.alive for w in system.workers if w is not victim)
    # the survivors took the dead worker's partitions: every checkpoint reached the end
    _assert_audit(settings, poster.acked, procs)


def test_group_change_racing_subscriptions_across_workers(settings: Settings, procs: Procs) -> None:
    # Subscriptions of many customers land while their package's groups change, the
    # product's partition folded by one worker, the customers' by others, at once.
    n = 400
    catalogue = list(Workload(customers=0).catalogue())
    subs = [
        se.event(
            "customer.subscription.created",
            se.subscription(
                f"sub_race{i:04d}",
                customer=f"cus_race{i:04d}",
                items=[("price_action", "prod_action")],
                created=1_700_000_100 + i,
            ),
            created=1_700_000_100 + i,
        )
        for i in range(n)
    ]
    changes = [
        se.event(
            "product.updated",
            se.product(
                "prod_action",
                groups="action" if k % 2 else "action,bonus",
                created=1_700_000_100 + k * 40,
            ),
            created=1_700_000_100 + k * 40,
        )
        for k in range(1, 11)
    ]
    racing = list(itertools.chain.from_iterable(zip(subs[::40], changes, strict=False)))
    rest = [s for i, s in enumerate(subs) if i % 40]
    system = start_system(procs, workers=2, api=False, ENTITLED_BATCH_SIZE="20")
    poster = Poster(system.ingest_urls, catalogue, SECRET, rate=500).start()
    poster.join(60)
    wait_until(lambda: caught_up(settings), 60, "the catalogue folded", procs)
    # then everything at once, as fast as the ingest takes it
    poster2 = Poster(system.ingest_urls, racing + rest, SECRET, rate=1000, concurrency=64)
    poster2.start().join(120)
    assert not poster2.gave_up and not poster2.rejected, dict(poster2.statuses)
    wait_until(lambda: caught_up(settings), 120, "the workers to reach the log end", procs)
    acked = {**poster.acked, **poster2.acked}
    figures = _assert_audit(settings, acked, procs)
    assert figures["processed_rows"] == len(catalogue) + n + len(changes)


def test_two_ingest_processes_on_one_topic(settings: Settings, procs: Procs) -> None:
    events = list(itertools.islice(Workload(customers=400, seed=5).events(), int(sized(900, 1500))))
    system = start_system(procs, ingests=2, workers=1, api=False)
    poster = Poster(system.ingest_urls, events, SECRET, rate=300).start()
    poster.join(120)
    assert not poster.gave_up and not poster.rejected, dict(poster.statuses)
    # round robin: each ingest took about half
    assert len(poster.acked_by_url) == 2
    assert min(poster.acked_by_url.values()) > len(events) // 3
    wait_until(lambda: caught_up(settings), 120, "the worker to reach the log end", procs)
    figures = _assert_audit(settings, poster.acked, procs)
    assert figures["acked"] == len(events)


# -- a 3-broker cluster ---------------------------------------------------------------------


@pytest.fixture
def cluster3(services_settings: Settings) -> Iterator[Settings]:
    """A private 3-broker KRaft cluster (and its own Postgres) in a temp home."""
    home = Path(tempfile.mkdtemp(prefix="ent3-"))
    home.chmod(home.stat().st_mode | stat.S_IXOTH)
    s = Settings(home=home, cache=services_settings.cache)
    try:
        ep = svc.up(s, brokers=3, fast=True)
        yield replace(s, kafka_bootstrap_servers=ep.bootstrap, database_url=ep.database_url)
    finally:
        try:
            svc.down(s, wipe=True)
        finally:
            shutil.rmtree(home, ignore_errors=True)


def _stop_node(cluster: Settings, index: int) -> None:
    state = sproc.load_state(cluster.services_dir)
    pid = state["kafka"]["nodes"][index]["pid"]
    os.kill(pid, signal.SIGTERM)  # a controlled shutdown of that broker only
    wait_until(lambda: not sproc.pid_alive(pid), 60, f"broker {index + 1} to stop")


def test_three_brokers_lose_one_under_load(cluster3: Settings, tmp_path: Path) -> None:
    from entitled.topics import ensure_topic
    from launcher.services._process import run_async

    topic = "stripe.events.rf3"
    run_async(
        lambda: ensure_topic(
            cluster3,
            topic,
            8,
            3,
            {"min.insync.replicas": "2", "max.message.bytes": str(2 * 1024 * 1024)},
        )
    )
    settings = replace(
        cluster3,
        topic=topic,
        replication_factor=3,
        webhook_secrets=(SECRET,),
        master_key=MASTER_KEY,
        keys_topic=f"{topic}.keys",
    )
    procs = Procs(settings, tmp_path)
    try:
        n = int(sized(1200, 2000))
        events = list(itertools.islice(Workload(customers=500, seed=9).events(), n))
        system = start_system(procs, workers=1, api=False, ENTITLED_REPLICATION_FACTOR="3")
        # The first half is posting while the broker stops; the second half is posted only
        # once it is gone, so however slowly the stop goes, half the webhooks meet two brokers.
        half = n // 2
        before = Poster(system.ingest_urls, events[:half], SECRET, rate=200).start()
        wait_until(lambda: len(before.acked) > half // 3, 60, "the first acks", procs)
        _stop_node(cluster3, 1)
        stopped_at = time.monotonic()
        before.join(120)
        after = Poster(system.ingest_urls, events[half:], SECRET, rate=200).start()
        after.join(120)
        statuses = dict(before.statuses + after.statuses)
        acked = before.acked | after.acked
        during = sum(1 for t in acked.values() if t > stopped_at)
        for poster in (before, after):
            assert not poster.gave_up and not poster.rejected, statuses
        # the ingest kept answering 200 with a broker gone (a few 503 during the leader
        # elections are tolerated: Stripe retries them)
        assert during >= n - half, statuses
        assert statuses.get("503", 0) < 50, statuses
        in_log = {r.event_id for r in log_records(settings)}
        assert set(acked) <= in_log
        wait_until(lambda: caught_up(settings), 120, "the worker to reach the log end", procs)
        print({"statuses": statuses, "acked_after_stop": during})
        _assert_audit(settings, acked, procs)
    finally:
        procs.stop_all()
        print(procs.report())
