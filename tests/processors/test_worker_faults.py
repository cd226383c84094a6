"""The worker while Postgres and Kafka restart under load: nothing lost, nothing doubled."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from entitled.settings import Settings
from launcher import services as svc
from launcher.services._process import run_async
from launcher.workload import Workload
from processors.cli import start_keyring
from processors.replay import replay
from tests.support.db import caught_up, query
from tests.support.kafka import publish
from tests.support.polling import wait_until
from tests.support.processes import Procs


def _applied(settings: Settings) -> int:
    try:
        return int(query(settings, "SELECT count(*) FROM live.processed_events")[0][0])
    except Exception:  # Postgres is down or not migrated yet
        return -1


def _equal_to_a_fresh_fold(settings: Settings, events: list[dict[str, object]]) -> None:
    assert _applied(settings) == len({e["id"] for e in events})
    assert query(settings, "SELECT count(*) FROM live.dead_letters") == [(0,)]
    report = run_async(lambda: replay(settings, dry_run=True, progress=False))
    assert report.differences == []
    for table in ("subscriptions", "purchases", "charges", "customer_entitlements"):
        cols = "customer, groups, movie_ids" if table == "customer_entitlements" else "id, record"
        live = query(settings, f"SELECT {cols} FROM live.{table} ORDER BY 1")
        fresh = query(settings, f"SELECT {cols} FROM {report.schema}.{table} ORDER BY 1")
        assert live == fresh, table


def _under_load(settings: Settings, procs: Procs, seed: int) -> list[dict[str, object]]:
    """Events published and a worker well into folding them."""
    events: list[dict[str, object]] = list(Workload(customers=500, seed=seed).events())
    publish(settings, events)
    procs.spawn("worker", ENTITLED_BATCH_SIZE="50")
    wait_until(lambda: _applied(settings) > 200, 60, "the worker to make progress", procs)
    return events


async def _keyring_started(settings: Settings) -> bool:
    keyring = await start_keyring(settings, patience_s=120)
    await keyring.stop()
    return True


def _more(seed: int) -> list[dict[str, object]]:
    return list(Workload(customers=100, seed=seed, start=1_800_000_000).events())


def _caught_up_as_a_fresh_fold(
    settings: Settings, procs: Procs, events: list[dict[str, object]]
) -> None:
    wait_until(lambda: caught_up(settings), 120, "the worker to catch up after the restart", procs)
    _equal_to_a_fresh_fold(settings, events)


def test_postgres_restart_under_load_loses_nothing(
    settings: Settings, services_settings: Settings, procs: Procs
) -> None:
    events = _under_load(settings, procs, seed=11)
    svc.stop_postgres(services_settings)
    try:
        more = _more(seed=12)
        publish(settings, more)  # the log keeps taking events while Postgres is down
    finally:
        svc.start_postgres(services_settings)
    _caught_up_as_a_fresh_fold(settings, procs, events + more)


def test_kafka_restart_under_load_loses_nothing(
    settings: Settings, services_settings: Settings, procs: Procs
) -> None:
    events = _under_load(settings, procs, seed=13)
    svc.stop_kafka(services_settings)
    pool = ThreadPoolExecutor(1)
    try:
        # A worker (re)started while the broker is away waits for it instead of exiting (one
        # whose keyring start met a broker restart exited, and the chaos run found it dead):
        # a whole worker, and the keyring start alone.
        late = procs.spawn("worker", ENTITLED_BATCH_SIZE="50", name="late-worker")
        keyring = pool.submit(run_async, lambda: _keyring_started(settings))
        wait_until(
            lambda: "waiting for Kafka/Postgres" in late.tail(200),
            60,
            "the late worker to wait for Kafka",
            procs,
        )
        assert not keyring.done(), keyring.exception()
    finally:
        svc.start_kafka(services_settings)
        pool.shutdown(wait=False)
    assert keyring.result(timeout=120)
    more = _more(seed=14)
    publish(settings, more)
    _caught_up_as_a_fresh_fold(settings, procs, events + more)
    assert late.alive, late.tail()
