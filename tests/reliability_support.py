"""Shared tools of the reliability tests (chaos, scale-out, hostile input).

- `Poster`: posts signed events to one or more ingest URLs from a background thread at a
  steady rate and retries every non-200 with backoff, as Stripe does; remembers which
  event ids were answered 200.
- `SearchLoop`: searches the read API in a loop from a background thread, recording the
  time and status of every answer.
- `audit`: reads the whole log and the projection tables and returns the figures of the
  invariants (lost, doubled, missing offsets, checkpoints, replay differences).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg

from entitled.settings import Settings
from entitled.shell import stripe_events as se
from entitled.shell.services._process import run_async
from entitled.topics import end_offsets
from processors.replay import read_log, replay
from projections.schema import MIRROR_TABLES
from tests.helpers import free_port
from tests.processes import Procs, wait_until

DEMO_CATALOG = Path(__file__).resolve().parents[1] / "projections" / "demo_catalog.jsonl"


def signed(event: Mapping[str, Any], secret: str) -> tuple[bytes, dict[str, str]]:
    body = se.encode(event)
    return body, {
        "Stripe-Signature": se.sign_header(body, secret),
        "Content-Type": "application/json",
    }


class Poster:
    """Posts `events` in order at `rate` per second (at most `concurrency` in flight) to
    `urls` in turn; a non-200 is retried with backoff (another URL next time) until
    `give_up_s` after the first try. 4xx answers are not retried: they are bugs."""

    def __init__(
        self,
        urls: Sequence[str],
        events: Sequence[Mapping[str, Any]],
        secret: str,
        rate: float,
        *,
        concurrency: int = 32,
        give_up_s: float = 120.0,
        overall_s: float | None = None,
    ) -> None:
        self.urls = [f"{u}/webhooks/stripe" for u in urls]
        self.events = events
        self.secret = secret
        self.rate = rate
        self.concurrency = concurrency
        self.give_up_s = give_up_s
        # After this long from the start, failures are no longer retried: a broken ingest
        # must fail the test, not hang it.
        self.overall_s = overall_s if overall_s is not None else len(events) / rate + 120.0
        self._begun = 0.0
        self.acked: dict[str, float] = {}  # event id -> monotonic time of its 200
        self.acked_by_url: Counter[str] = Counter()
        self.last_ack = 0.0  # monotonic time of the latest 200
        self.statuses: Counter[str] = Counter()
        self.rejected: list[tuple[str, int, str]] = []  # (event id, status, body): 4xx
        self.gave_up: list[str] = []
        self.latencies: list[float] = []
        self.done = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> Poster:
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the poster did not finish within {timeout:.0f} s")

    @property
    def settled(self) -> int:
        return len(self.acked) + len(self.rejected) + len(self.gave_up)

    async def _main(self) -> None:
        sem = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency + 4)
        tasks: set[asyncio.Task[None]] = set()
        try:
            async with httpx.AsyncClient(timeout=30, limits=limits) as client:
                begun = self._begun = time.monotonic()
                for i, event in enumerate(self.events):
                    delay = begun + i / self.rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await sem.acquire()
                    task = asyncio.create_task(self._deliver(client, i, event, sem))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await asyncio.gather(*tasks)
        finally:
            self.done.set()

    async def _deliver(
        self, client: httpx.AsyncClient, i: int, event: Mapping[str, Any], sem: asyncio.Semaphore
    ) -> None:
        try:
            first = time.monotonic()
            for attempt in range(10_000):
                url = self.urls[(i + attempt) % len(self.urls)]
                body, headers = signed(event, self.secret)
                started = time.monotonic()
                try:
                    r = await client.post(url, content=body, headers=headers)
                    status, text = str(r.status_code), r.text
                except httpx.HTTPError as exc:
                    status, text = type(exc).__name__, str(exc)
                self.statuses[status] += 1
                if status == "200":
                    self.latencies.append(time.monotonic() - started)
                    self.acked[event["id"]] = self.last_ack = time.monotonic()
                    self.acked_by_url[url] += 1
                    return
                if status.startswith("4"):
                    self.rejected.append((event["id"], int(status), text[:200]))
                    return
                now = time.monotonic()
                if now - first > self.give_up_s or now - self._begun > self.overall_s:
                    self.gave_up.append(event["id"])
                    return
                await asyncio.sleep(min(0.2 * 2**attempt, 3.0) * (0.5 + random.random()))
        finally:
            sem.release()


class SearchLoop:
    """GET /v1/search at `rate` per second until stopped; `answers` holds
    (monotonic time, status) with status -1 for a connection failure."""

    def __init__(self, api_url: str, customers: Sequence[str], rate: float = 10.0) -> None:
        self.api_url = api_url
        self.customers = list(customers) or ["cus_nobody"]
        self.rate = rate
        self.answers: list[tuple[float, int]] = []
        self.bodies_5xx: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SearchLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        rng = random.Random(5)
        words = ["harrison ford", "desert", "christmas", "", "jones & !", "space"]
        with httpx.Client(base_url=self.api_url, timeout=10) as client:
            while not self._stop.wait(1 / self.rate):
                params = {"customer": rng.choice(self.customers), "q": rng.choice(words)}
                try:
                    r = client.get("/v1/search", params=params)
                    status = r.status_code
                    if status >= 500:
                        self.bodies_5xx.append(r.text[:300])
                except httpx.HTTPError:
                    status = -1
                self.answers.append((time.monotonic(), status))


# ---------------------------------------------------------------------------------------
# Reading the log and the tables


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    event_id: str | None


def log_records(settings: Settings) -> list[Record]:
    """Every record of the settings' topic, from offset 0 to the current end."""
    bootstrap = settings.kafka_bootstrap_servers or ""

    async def go() -> list[Record]:
        ends = await end_offsets(bootstrap, settings.topic)
        out: list[Record] = []
        async for batch in read_log(bootstrap, settings.topic, {}, ends):
            for m in batch:
                try:
                    event_id = orjson.loads(m.value).get("id")
                except (orjson.JSONDecodeError, AttributeError):
                    event_id = None
                out.append(Record(m.partition, m.offset, event_id))
        return out

    return run_async(go)


def sql_rows(settings: Settings, q: str, *args: Any) -> list[tuple[Any, ...]]:
    assert settings.database_url
    with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(q, args or None).fetchall()


def active_schema(settings: Settings) -> str:
    rows = sql_rows(
        settings,
        "SELECT v.schema_name FROM entitled.active a JOIN entitled.versions v USING (version)",
    )
    return str(rows[0][0])


def processed_count(settings: Settings) -> int:
    """Events applied to the active version so far (0 while Postgres is unreachable)."""
    try:
        schema = active_schema(settings)
        return int(sql_rows(settings, f"SELECT count(*) FROM {schema}.processed_events")[0][0])
    except (psycopg.Error, IndexError):
        return 0


def caught_up(settings: Settings) -> bool:
    """Every partition's checkpoint has reached the log end (False while a service is down)."""
    try:
        ends = run_async(
            lambda: end_offsets(settings.kafka_bootstrap_servers or "", settings.topic)
        )
        cps = dict(
            sql_rows(
                settings,
                "SELECT partition, next_offset FROM live.checkpoints WHERE topic = %s",
                settings.topic,
            )
        )
    except Exception:  # either service briefly unreachable: not caught up yet
        return False
    return all(cps.get(p, 0) >= e for p, e in ends.items())


@dataclass
class Audit:
    log_records: int = 0
    distinct_in_log: int = 0
    acked: int = 0
    acked_not_in_log: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # acked, never applied nor dead-lettered
    doubled: int = 0  # processed rows beyond one per id
    offsets_missing: list[tuple[int, int]] = field(default_factory=list)
    processed_rows: int = 0
    dead_letters: int = 0
    checkpoint_gaps: dict[int, tuple[int, int]] = field(default_factory=dict)
    differing_customers: int = 0
    differences_sample: list[dict[str, Any]] = field(default_factory=list)
    tables_unequal: list[str] = field(default_factory=list)
    replay_schema: str = ""

    @property
    def problems(self) -> list[str]:
        out = []
        if self.acked_not_in_log:
            out.append(f"{len(self.acked_not_in_log)} ids answered 200 are not in the log")
        if self.lost:
            out.append(f"{len(self.lost)} acked events lost, e.g. {self.lost[:5]}")
        if self.doubled:
            out.append(f"{self.doubled} events applied twice")
        if self.offsets_missing:
            out.append(f"{len(self.offsets_missing)} log offsets neither applied nor parked")
        if self.checkpoint_gaps:
            out.append(f"checkpoints differ from log ends: {self.checkpoint_gaps}")
        if self.differing_customers:
            out.append(
                f"{self.differing_customers} customers differ from a fresh replay: "
                f"{self.differences_sample}"
            )
        if self.tables_unequal:
            out.append(f"mirrored tables differ from a fresh replay: {self.tables_unequal}")
        return out

    def figures(self) -> dict[str, Any]:
        return {
            "log_records": self.log_records,
            "distinct_events_in_log": self.distinct_in_log,
            "acked": self.acked,
            "acked_not_in_log": len(self.acked_not_in_log),
            "lost": len(self.lost),
            "doubled": self.doubled,
            "offsets_missing": len(self.offsets_missing),
            "processed_rows": self.processed_rows,
            "dead_letters": self.dead_letters,
            "checkpoint_gaps": len(self.checkpoint_gaps),
            "differing_customers": self.differing_customers,
            "tables_unequal": self.tables_unequal,
        }


def audit(settings: Settings, acked: set[str] | Mapping[str, Any]) -> Audit:
    """Check the invariants of DESIGN.md over the whole log and the live version; call it
    once the workers have caught up."""
    a = Audit(acked=len(acked))
    records = log_records(settings)
    a.log_records = len(records)
    in_log = {r.event_id for r in records}
    a.distinct_in_log = len(in_log - {None})
    a.acked_not_in_log = sorted(set(acked) - in_log)
    schema = active_schema(settings)
    processed = dict(
        (eid, (p, o))
        for eid, p, o in sql_rows(
            settings, f'SELECT event_id, partition, "offset" FROM {schema}.processed_events'
        )
    )
    a.processed_rows = int(
        sql_rows(settings, f"SELECT count(*) FROM {schema}.processed_events")[0][0]
    )
    a.doubled = a.processed_rows - len(processed)
    dead = {
        (p, o): eid
        for p, o, eid in sql_rows(
            settings, f'SELECT partition, "offset", event_id FROM {schema}.dead_letters'
        )
    }
    a.dead_letters = len(dead)
    dead_ids = set(dead.values())
    a.offsets_missing = [
        (r.partition, r.offset)
        for r in records
        if r.event_id not in processed and (r.partition, r.offset) not in dead
    ]
    # An applied row must point at a record of the log holding that event.
    by_position = {(r.partition, r.offset): r.event_id for r in records}
    a.doubled += sum(1 for eid, pos in processed.items() if by_position.get(pos) != eid)
    a.lost = sorted(e for e in acked if e not in processed and e not in dead_ids)
    ends = run_async(lambda: end_offsets(settings.kafka_bootstrap_servers or "", settings.topic))
    cps = dict(
        sql_rows(
            settings,
            f"SELECT partition, next_offset FROM {schema}.checkpoints WHERE topic = %s",
            settings.topic,
        )
    )
    a.checkpoint_gaps = {p: (cps.get(p, 0), e) for p, e in ends.items() if cps.get(p, 0) != e}
    report = run_async(lambda: replay(settings, dry_run=True, progress=False))
    a.replay_schema = report.schema
    a.differing_customers = len(report.differences)
    a.differences_sample = report.differences[:5]
    for table in (*MIRROR_TABLES, "customer_entitlements"):
        key = "customer" if table == "customer_entitlements" else "id"
        cols = "customer, groups, movie_ids" if key == "customer" else "id, record, v_created"
        live = sql_rows(settings, f"SELECT {cols} FROM {schema}.{table} ORDER BY {key}")
        fresh = sql_rows(settings, f"SELECT {cols} FROM {report.schema}.{table} ORDER BY {key}")
        if live != fresh:
            a.tables_unequal.append(f"{table} ({len(live)} live rows, {len(fresh)} fresh)")
    return a


# ---------------------------------------------------------------------------------------
# Processes


def start_system(
    procs: Procs, *, ingests: int = 1, workers: int = 1, api: bool = True, **env: str
) -> dict[str, Any]:
    """`entitled migrate` and the demo catalogue, then ingest(s), worker(s) and the api as
    real processes (each with `env` added); waits until the HTTP ones are ready. Returns
    their Procs and URLs."""
    for args in (("migrate",), ("catalog", "load", str(DEMO_CATALOG))):
        p = procs.spawn(*args, name=args[0])
        assert p.popen is not None
        assert p.popen.wait(120) == 0, p.tail()
    # One consumer group per test topic, as in production (one group per topic): members
    # SIGKILLed by an earlier test must not cause rebalances in this one.
    env = {"ENTITLED_CONSUMER_GROUP": f"entitled-worker-{procs.settings.topic}", **env}
    out: dict[str, Any] = {"ingest": [], "ingest_urls": [], "workers": [], "env": env}
    for _ in range(ingests):
        port = free_port()
        out["ingest"].append(
            procs.spawn("ingest", "--port", str(port), "--log-level", "warning", **env)
        )
        out["ingest_urls"].append(f"http://127.0.0.1:{port}")
    for _ in range(workers):
        out["workers"].append(procs.spawn("worker", **env))
    if api:
        port = free_port()
        out["api"] = procs.spawn("api", "--port", str(port), "--log-level", "warning", **env)
        out["api_url"] = f"http://127.0.0.1:{port}"
    for url in [*out["ingest_urls"], *([out["api_url"]] if api else [])]:
        wait_until(lambda u=url: ready(u), 90, f"{url}/readyz", procs)
    return out


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False
