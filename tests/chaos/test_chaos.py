"""Chaos: the whole system under a steady load of signed webhooks and searches while the
worker is SIGKILLed and Kafka and Postgres restart at seeded random moments.

Afterwards every invariant of docs/architecture.md is checked on the whole log (see
`tests.support.audit.audit`) and the figures are printed. Sizes come from the
environment, so that the same test is the long version (`bench/chaos_long.py`):

    CHAOS_EVENTS (3000)  CHAOS_RATE (events/s, 120)  CHAOS_SEED (7)
    CHAOS_WORKER_KILLS (2)  CHAOS_KAFKA_RESTARTS (1)  CHAOS_POSTGRES_RESTARTS (1)
(`make test`; `make test-long` runs 10000 events at 150/s with 5, 2 and 2 faults)
    CHAOS_WORKERS (2: a kill's partitions fail over to the survivor; 1: to the replacement)
    CHAOS_RESULTS (a path: write the figures there as JSON)  CHAOS_TIMEOUT (s, 900)
    CHAOS_SESSION_S (the workers' Kafka session timeout; unset: the tests' 2 s)

This stops and restarts the SESSION Kafka and Postgres that every test shares; each is
restored in `finally` and waited for before the test returns.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from entitled.settings import Settings
from ingest.keys import routing_key
from launcher import services as svc
from launcher.workload import Workload
from tests.support.audit import audit
from tests.support.db import caught_up, query
from tests.support.examples import sized
from tests.support.failover import worker_failover
from tests.support.load import Poster, SearchLoop
from tests.support.polling import get, metric, seconds_until, wait_until
from tests.support.processes import Proc, Procs
from tests.support.system import System, start_system

SECRET = "whsec_test_secret"
DOWN_S = 3.0  # how long a stopped service stays down


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


@dataclass
class Fault:
    at_s: float
    kind: str  # worker_kill | kafka_restart | postgres_restart
    began: float = 0.0
    ended: float = 0.0  # the service is back (start returned) / the new worker spawned
    recovery_s: dict[str, float | None] = field(default_factory=dict)


def _schedule(rng: random.Random, span_s: float) -> list[Fault]:
    kinds = (
        ["worker_kill"] * int(_env("CHAOS_WORKER_KILLS", sized(2, 5)))
        + ["kafka_restart"] * int(_env("CHAOS_KAFKA_RESTARTS", sized(1, 2)))
        + ["postgres_restart"] * int(_env("CHAOS_POSTGRES_RESTARTS", sized(1, 2)))
    )
    rng.shuffle(kinds)
    # One fault per slot, at a random moment inside it, so faults never overlap.
    slot = span_s / len(kinds)
    return [
        Fault(round(i * slot + rng.uniform(0.1, 0.7) * slot, 1), k) for i, k in enumerate(kinds)
    ]


def _all_fold(system: System) -> bool:
    """Every live worker folds partitions of its own (`entitled_worker_partitions`)."""
    live = [w for w in system.workers if w.alive]
    return all((metric(system.probe_url(w), "entitled_worker_partitions") or 0) > 0 for w in live)


def _held(system: System) -> float:
    """The partitions the live workers hold, sought to their checkpoints."""
    live = [w for w in system.workers if w.alive]
    return sum(metric(system.probe_url(w), "entitled_worker_partitions") or 0 for w in live)


def _last_commit(settings: Settings) -> float:
    """Seconds since the epoch of the latest checkpoint write (0 if unreadable)."""
    try:
        rows = query(settings, "SELECT extract(epoch FROM max(updated_at)) FROM live.checkpoints")
        return float(rows[0][0] or 0)
    except Exception:
        return 0.0


def _worker_back(settings: Settings, since: float) -> bool:
    """The worker committed a batch after `since`, or has nothing left to fold."""
    return _last_commit(settings) > since or caught_up(settings)


def _search_ok(api_url: str) -> bool:
    r = get(f"{api_url}/v1/search", params={"customer": "cus_0000001", "q": "x"}, timeout=5)
    return r.status_code == 200


@pytest.mark.timeout(int(os.environ.get("CHAOS_TIMEOUT") or 900))
def test_chaos(settings: Settings, services_settings: Settings, procs: Procs) -> None:
    n_events = int(_env("CHAOS_EVENTS", sized(3000, 10_000)))
    rate = _env("CHAOS_RATE", sized(120, 150))
    rng = random.Random(int(_env("CHAOS_SEED", 7)))
    events = list(itertools.islice(Workload(customers=n_events // 3 + 10).events(), n_events))
    customers = sorted({routing_key(e) for e in events if routing_key(e).startswith("cus_")})
    n_workers = int(_env("CHAOS_WORKERS", 2))
    session = os.environ.get("CHAOS_SESSION_S")
    extra = {"ENTITLED_KAFKA_SESSION_TIMEOUT_S": session} if session else {}
    system = start_system(procs, workers=n_workers, ENTITLED_BATCH_SIZE="200", **extra)
    api_url = system.api_url
    faults = _schedule(rng, 0.85 * n_events / rate)
    worker_exits: list[str] = []
    killed: list[Proc] = []
    api_exits = 0

    poster = Poster(system.ingest_urls, events, SECRET, rate).start()
    searches = SearchLoop(api_url, customers[:500], rate=10).start()
    t0 = time.monotonic()
    try:
        for fault in faults:
            while time.monotonic() - t0 < fault.at_s and not poster.done.is_set():
                time.sleep(0.05)
            for worker in [w for w in system.workers if w.popen and not w.alive]:
                if worker not in killed:  # it died by itself since the last fault: a finding
                    worker_exits.append(f"before {fault.kind} at {fault.at_s}s:\n{worker.tail(30)}")
                    killed.append(worker)
                    system.add_worker()
            fault.began = time.monotonic()
            wall = time.time()
            if fault.kind == "worker_kill":
                # a failover needs a survivor: the last kill's replacement must have joined
                wait_until(lambda: _all_fold(system), 90, "every worker to hold partitions")
                at = f"{time.strftime('%H:%M:%S')}, load {os.getloadavg()[0]:.1f}"
                victim = next(w for w in system.workers if w.alive)
                start = time.monotonic()
                victim.kill()
                killed.append(victim)
                if n_workers == 1:
                    system.add_worker()
                # failover: the survivors hold every partition and fold them all again
                took = worker_failover(settings, lambda: _held(system), start)
                fault.recovery_s["failover"] = took
                print(f"FAILOVER worker_kill at {fault.at_s}s ({at}): {took} s")
                if n_workers > 1:
                    system.add_worker()  # back to n copies
                fault.ended = time.monotonic()
                fault.recovery_s["worker"] = seconds_until(
                    lambda w=wall: _worker_back(settings, w), 90
                )
            elif fault.kind == "kafka_restart":
                svc.stop_kafka(services_settings)
                try:
                    time.sleep(DOWN_S)  # the fault itself: the broker stays down this long
                finally:
                    svc.start_kafka(services_settings)
                fault.ended = time.monotonic()
                ingest = system.ingest_urls[0]
                fault.recovery_s["ingest_ready"] = seconds_until(
                    lambda u=ingest: get(f"{u}/readyz", timeout=3).status_code == 200, 90
                )
                # /readyz may say ready while writes still fail: the first 200 is the proof
                if not poster.done.is_set():
                    fault.recovery_s["ingest_200"] = seconds_until(
                        lambda e=fault.ended: poster.last_ack > e, 60
                    )
                fault.recovery_s["worker"] = seconds_until(
                    lambda w=wall + DOWN_S: _worker_back(settings, w), 120
                )
            else:
                svc.stop_postgres(services_settings)
                try:
                    time.sleep(DOWN_S)
                finally:
                    svc.start_postgres(services_settings)
                fault.ended = time.monotonic()
                fault.recovery_s["search_ok"] = seconds_until(lambda: _search_ok(api_url), 60)
                fault.recovery_s["worker"] = seconds_until(
                    lambda w=wall + DOWN_S: _worker_back(settings, w), 120
                )
            if not system.api.alive:
                api_exits += 1
    finally:
        # Whatever happened, the session services must be up for the next tests.
        svc.start_kafka(services_settings)
        svc.start_postgres(services_settings)

    poster.join(timeout=max(600.0, 3 * n_events / rate))
    for worker in [w for w in system.workers if w.popen and not w.alive and w not in killed]:
        worker_exits.append(f"after the faults:\n{worker.tail(30)}")
        system.add_worker()
    wait_until(lambda: caught_up(settings), 300, "the worker to reach the log end", procs)
    # The API must have recovered by itself: a few more searches after everything.
    wait_until(lambda: _search_ok(api_url), 30, "the api to answer searches again", procs)
    searches.stop()
    elapsed = time.monotonic() - t0
    result = audit(settings, poster.acked)

    # Search answers: a 5xx (or refused connection) only while Postgres was down or
    # recovering, i.e. between its stop and the first good search after its start.
    pg_windows = [
        (f.began, f.ended + (f.recovery_s.get("search_ok") or 60.0) + 1.0)
        for f in faults
        if f.kind == "postgres_restart"
    ]
    bad_searches = [
        (round(t - t0, 2), s)
        for t, s in searches.answers
        if (s >= 500 or s < 0) and not any(a <= t <= b for a, b in pg_windows)
    ]
    statuses: dict[str, int] = {}
    for _, s in searches.answers:
        statuses[str(s)] = statuses.get(str(s), 0) + 1

    figures = {
        "events": n_events,
        "rate_per_s": rate,
        "elapsed_s": round(elapsed, 1),
        "faults": [{"at_s": f.at_s, "kind": f.kind, "recovery_s": f.recovery_s} for f in faults],
        "ingest_statuses": dict(poster.statuses),
        "ingest_gave_up": len(poster.gave_up),
        "ingest_rejected_4xx": poster.rejected[:5],
        "search_statuses": statuses,
        "searches_5xx_outside_postgres_down": bad_searches[:20],
        "worker_exited_by_itself": len(worker_exits),
        "api_exited": api_exits,
        **result.figures(),
    }
    print(json.dumps(figures, indent=2))
    if os.environ.get("CHAOS_RESULTS"):
        Path(os.environ["CHAOS_RESULTS"]).write_text(json.dumps(figures, indent=2) + "\n")

    problems = list(result.problems)
    if poster.rejected:
        problems.append(f"valid events answered 4xx: {poster.rejected[:5]}")
    if poster.gave_up:
        problems.append(f"{len(poster.gave_up)} events never got a 200")
    if bad_searches:
        problems.append(f"searches failed outside Postgres downtime: {bad_searches[:10]}")
    if worker_exits:
        problems.append("the worker exited by itself:\n" + "\n".join(worker_exits))
    if api_exits:
        problems.append("the api process exited")
    if any(v is None for f in faults for v in f.recovery_s.values()):
        problems.append(f"no recovery after some faults: {figures['faults']}")
    assert result.acked == n_events - len(poster.gave_up) - len(poster.rejected)
    assert not problems, "\n".join(problems)
