"""Every process in two copies under a steady load of webhooks and searches: one copy of each
kind is SIGKILLed in turn, replaced, then one copy of each is stopped with SIGTERM (a deploy).

Checked: no webhook answered 200 is lost and live equals a fresh replay (`audit`); no change
is published twice with different content; no search answers 5xx, and a search fails to
connect only on the copy that was just killed; a SIGTERMed process says "not ready" while it
drains and exits 0 within 10 s. Printed: the failover of each kind (`FAILOVER` lines), the
seconds from the fault until the surviving copies do the dead one's work:
- worker: every partition folds again (`tests.support.failover`);
- relay: the standby holds the leader lock (`entitled_relay_leader 1`);
- hydrator: the survivor holds every partition (`entitled_hydrator_partitions`);
- ingest, api: the next webhook answered 200 / search answered 200 (the client's retry on
  the other copy; a load balancer's health check does the same).

Sizes from the environment, so that `bench/chaos_long.py --copies` runs the long version:
COPIES_RATE (webhooks/s, 30), COPIES_SECONDS (load duration; unset: the load lasts as long as
the faults, at most 120 s), COPIES_RESULTS (JSON path), COPIES_SESSION_S (the Kafka session
timeout of workers and hydrators; unset: the tests' 2 s; 6 is the shipped default).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from entitled.settings import Settings
from ingest.keys import routing_key
from launcher.services._process import run_async
from launcher.workload import Workload
from tests.support.audit import audit
from tests.support.db import caught_up
from tests.support.failover import folding_again, worker_failover
from tests.support.kafka import read_topic
from tests.support.load import Poster, SearchLoop
from tests.support.polling import get, metric, seconds_until, wait_until
from tests.support.processes import Proc, Procs
from tests.support.system import System, ready, start_system

SECRET = "whsec_test_secret"
DRAIN_DELAY_S = 1.5  # long enough to see /readyz fail (polled every 20 ms)
KINDS = ("worker", "relay", "hydrator", "ingest", "api")


def _gauge(system: System, proc: Proc, name: str) -> float | None:
    return metric(system.probe_url(proc), name)


def _copies(system: System, kind: str) -> list[Proc]:
    lists = {
        "worker": system.workers,
        "relay": system.relays,
        "hydrator": system.hydrators,
        "ingest": system.ingests,
        "api": system.apis,
    }
    return [p for p in lists[kind] if p.alive]


def _leader(system: System) -> Proc | None:
    for relay in _copies(system, "relay"):
        if _gauge(system, relay, "entitled_relay_leader") == 1:
            return relay
    return None


def _steady(system: System) -> bool:
    """Both workers fold, one relay leads, both hydrators hold partitions."""
    held = [
        *(_gauge(system, w, "entitled_worker_partitions") for w in _copies(system, "worker")),
        *(_gauge(system, h, "entitled_hydrator_partitions") for h in _copies(system, "hydrator")),
    ]
    return (
        _leader(system) is not None
        and all(n is not None and n > 0 for n in held)
        and folding_again(system.settings, {})
    )


class Run:
    """The faults of one run, with what they measured."""

    def __init__(self, system: System, poster: Poster, searches: SearchLoop) -> None:
        self.system = system
        self.poster = poster
        self.searches = searches
        self.failover: dict[str, float | None] = {}
        self.handover: dict[str, float | None] = {}
        self.exit_codes: dict[str, int | None] = {}
        self.saw_draining: dict[str, bool] = {}
        self.dead_urls: dict[str, float] = {}  # url -> when its process died or drained

    def kill(self, kind: str) -> None:
        s = self.system
        victim = _copies(s, kind)[0]
        if kind == "relay":
            victim = _leader(s) or victim
        survivors = [p for p in _copies(s, kind) if p is not victim]
        url = s.probe_urls.get(id(victim), "")
        t = time.monotonic()
        victim.kill()
        self.dead_urls[url] = t
        if kind == "worker":
            self.failover[kind] = worker_failover(s.settings, lambda: self._held(survivors), t)
        else:
            measuring = time.monotonic()
            taken = self._until_taken_over(kind, survivors, t)
            self.failover[kind] = None if taken is None else round(taken + measuring - t, 2)
        if kind == "api":
            self.searches.drop(url)

    def _held(self, survivors: list[Proc]) -> float:
        return sum(_gauge(self.system, w, "entitled_worker_partitions") or 0 for w in survivors)

    def _until_taken_over(self, kind: str, survivors: list[Proc], t: float) -> float | None:
        s = self.system
        if kind == "relay":
            return seconds_until(lambda: _leader(s) in survivors, 60)
        if kind == "hydrator":
            return seconds_until(
                lambda: (
                    _gauge(s, survivors[0], "entitled_hydrator_partitions") == s.settings.partitions
                ),
                60,
            )
        if kind == "ingest":
            return seconds_until(lambda: self.poster.last_ack > t, 60)
        return seconds_until(
            lambda: any(at > t and code == 200 for at, _, code in self.searches.by_url[-20:]),
            60,
        )

    def terminate(self, kind: str) -> None:
        s = self.system
        victim = _copies(s, kind)[0]
        if kind == "relay":
            victim = _leader(s) or victim
        survivors = [p for p in _copies(s, kind) if p is not victim]
        url = s.probe_urls.get(id(victim), "")
        assert victim.popen is not None
        t = time.monotonic()
        os.killpg(victim.popen.pid, signal.SIGTERM)
        if kind == "worker":  # its drain's last commit is no hand-over: `worker_failover`
            self.handover[kind] = worker_failover(s.settings, lambda: self._held(survivors), t)
        drained = None
        if kind in ("ingest", "api"):  # the others stop within a moment of their 503
            # a load balancer takes a copy out of rotation once its /readyz fails
            drained = seconds_until(lambda: _not_ready(url), 5, step=0.02)
            self.saw_draining[kind] = drained is not None
        # out of rotation from the failed /readyz on (a client may still meet it until then)
        self.dead_urls[url] = t + (drained or 0.0)
        if kind == "api":
            self.searches.drop(url)
        if kind != "worker":
            measuring = time.monotonic()
            taken = self._until_taken_over(kind, survivors, t)
            # from the signal on, not from the end of the readiness poll
            self.handover[kind] = None if taken is None else round(taken + measuring - t, 2)
        try:
            self.exit_codes[kind] = victim.wait(max(0.1, 10 - (time.monotonic() - t)))
        except Exception:
            self.exit_codes[kind] = None  # not within 10 s


def _not_ready(url: str) -> bool:
    try:
        return get(f"{url}/readyz", timeout=1).status_code == 503
    except httpx.HTTPError:
        return False


def _changes_doubled(settings: Settings) -> list[int]:
    """Change ids published more than once with different content."""
    topic = replace(settings, topic=settings.changes_topic)
    seen: dict[int, bytes] = {}
    differ = []
    for r in run_async(lambda: read_topic(topic)):
        doc = orjson.loads(r.value)
        if seen.setdefault(doc["id"], r.value) != r.value:
            differ.append(doc["id"])
    return differ


@pytest.mark.timeout(900)
def test_every_process_in_two_copies(settings: Settings, procs: Procs) -> None:
    rate = float(os.environ.get("COPIES_RATE") or 30)
    seconds = float(os.environ.get("COPIES_SECONDS") or 120)
    n = int(rate * seconds)
    events = list(itertools.islice(Workload(customers=n // 3 + 10).events(), n))
    customers = sorted({routing_key(e) for e in events if routing_key(e).startswith("cus_")})
    settings = replace(settings, changes_topic=f"{settings.topic}.changes")
    session = os.environ.get("COPIES_SESSION_S")
    extra = {"ENTITLED_KAFKA_SESSION_TIMEOUT_S": session} if session else {}
    system = start_system(
        procs,
        ingests=2,
        workers=2,
        apis=2,
        relays=2,
        hydrators=2,
        ENTITLED_BATCH_SIZE="100",
        ENTITLED_CHANGES_TOPIC=settings.changes_topic,
        ENTITLED_DRAIN_DELAY_S=str(DRAIN_DELAY_S),
        **extra,
    )
    # retried as long as it takes on a loaded machine (Stripe retries for days)
    poster = Poster(system.ingest_urls, events, SECRET, rate, overall_s=900).start()
    searches = SearchLoop(system.api_urls, customers[:200], rate=10).start()
    run = Run(system, poster, searches)
    wait_until(lambda: _steady(system), 120, "two workers, a relay leader, two hydrators", procs)

    for kind in KINDS:  # SIGKILL one copy of each kind in turn
        print(f"{time.strftime('%H:%M:%S')} killing a {kind}", flush=True)
        run.kill(kind)
        print(f"killed a {kind}: taken over in {run.failover[kind]} s", flush=True)
    # back to two copies (the ingest on the dead one's port: the Poster's URLs are fixed)
    for add in (system.add_worker, system.add_relay, system.add_hydrator, system.add_api):
        add()
    dead_ingest = next(u for u in system.ingest_urls if u in run.dead_urls)
    system.add_ingest(dead_ingest)
    wait_until(functools.partial(ready, dead_ingest), 90, f"{dead_ingest}/readyz", procs)
    del run.dead_urls[dead_ingest]
    wait_until(lambda: _steady(system), 120, "the replacements to take part", procs)
    for url in system.api_urls[2:]:
        wait_until(functools.partial(ready, url), 90, f"{url}/readyz", procs)
        searches.add(url)
    for kind in KINDS:  # SIGTERM one copy of each kind in turn (a deploy)
        print(f"{time.strftime('%H:%M:%S')} stopping a {kind}", flush=True)
        run.terminate(kind)
    if not os.environ.get("COPIES_SECONDS"):
        poster.stop()  # the short version: load as long as the faults last

    poster.join(timeout=seconds * 3 + 300)
    wait_until(lambda: caught_up(settings), 300, "the workers to reach the log end", procs)
    searches.stop()
    result = audit(settings, poster.acked)
    doubled = _changes_doubled(settings)
    bad_searches = [
        (round(t, 2), url, code)
        for t, url, code in searches.by_url
        if code >= 500 or (code < 0 and not (url in run.dead_urls and t >= run.dead_urls[url]))
    ]
    figures: dict[str, Any] = {
        "events": poster.settled,
        "rate_per_s": rate,
        "failover_s": run.failover,
        "sigterm_handover_s": run.handover,
        "sigterm_exit_codes": run.exit_codes,
        "ingest_statuses": dict(poster.statuses),
        "search_statuses": {
            str(c): sum(1 for _, _, x in searches.by_url if x == c)
            for c in {x for _, _, x in searches.by_url}
        },
        **result.figures(),
    }
    for kind in KINDS:
        print(
            f"FAILOVER {kind}: kill {run.failover.get(kind)} s, "
            f"sigterm {run.handover.get(kind)} s (exit {run.exit_codes.get(kind)})"
        )
    print(json.dumps(figures, indent=2))
    if os.environ.get("COPIES_RESULTS"):
        Path(os.environ["COPIES_RESULTS"]).write_text(json.dumps(figures, indent=2) + "\n")

    problems = list(result.problems)
    if poster.rejected or poster.gave_up:
        problems.append(f"webhooks not accepted: {poster.rejected[:3]} {poster.gave_up[:3]}")
    if doubled:
        problems.append(f"changes published twice with different content: {doubled[:10]}")
    if bad_searches:
        problems.append(f"searches failed outside their process's death: {bad_searches[:10]}")
    missing = [k for k, v in {**run.failover, **run.handover}.items() if v is None]
    if missing:
        problems.append(f"no process took over after a fault of: {missing}")
    if any(code != 0 for code in run.exit_codes.values()):
        problems.append(f"SIGTERM did not exit 0 within 10 s: {run.exit_codes}")
    if not all(run.saw_draining.values()):
        problems.append(f"/readyz did not fail during the drain: {run.saw_draining}")
    assert not problems, "\n".join(problems)
