"""Benchmark the change feed (issue 13): webhook -> change latency, and the feed's cost to the fold.

Side by side, in one run:
  * `latency`  - the real `entitled ingest`, `worker`, `relay` and `api` processes; signed
                 `customer.subscription.created` events, each a new customer taking the
                 `action` package, posted open-loop at `--rate`/s. Two observers note when
                 each customer's change arrives: an aiokafka consumer of the change topic
                 (`entitlements.changes`, a fresh name per run) and an `EventSource` on
                 `/v1/changes/stream` in headless chromium (`--no-browser` leaves it out).
                 Latency runs from when each post was due, so a stalled pipeline is not
                 hidden; the first `--warmup` seconds are not counted;
  * `fold`     - bench/fold.py's in-process path (`read_log` + `ProjectionStore.apply`, batches
                 of `--batch`) over one filled topic, each run into a fresh database, with the
                 feed on (`ProjectionStore(..., feed=True)`) and off (`feed=False`), alternating
                 (off, on, on, off, ...) for `--rounds` rounds; the feed's cost is
                 1 - median(on) / median(off).

    .venv/bin/python bench/changes.py [--events 40000] [--rounds 2] [--rate 200] [--seconds 20]

Uses KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL when set, else starts the local services in a
temp home. Prints figures; writes `bench/results/changes.json`. Goals: p99 webhook -> change
on the topic < 250 ms at 200 webhooks/s; the feed costs < 10% of fold throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as `python bench/changes.py`, this folder comes first on sys.path: replace it by the repo.
_HERE = Path(__file__).parent.resolve()
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench import _common as common  # noqa: E402
from bench import fold  # noqa: E402
from entitled.settings import Settings  # noqa: E402

SECRET = "whsec_bench_secret"
GOALS = {"p99_ms_topic_at_200_per_s": 250, "feed_cost_share": 0.10}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]

# Opens the stream; resolves once the server said `ready` (the cursor is set), then notes
# (customer, wall-clock seconds) for every change.
_OPEN_STREAM = """() => new Promise((resolve, reject) => {
  window.arrivals = [];
  const feed = new EventSource('/v1/changes/stream');
  feed.addEventListener('ready', () => resolve(true));
  feed.addEventListener('change', (e) => {
    window.arrivals.push([JSON.parse(e.data).customer, Date.now() / 1000]);
  });
  setTimeout(() => reject(new Error('no ready event in 30 s')), 30000);
})"""


# -- fold with the feed on and off ------------------------------------------------------


def fold_feed(base: Settings, events: int, batch: int, rounds: int) -> dict[str, Any]:
    import psycopg

    print(f"fold: filling {base.topic} with {events} events ...", flush=True)
    fill = common.fill_topic(base, events)
    ends = asyncio.run(common.end_offsets(base))
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    order = [k for r in range(rounds) for k in (("off", "on") if r % 2 == 0 else ("on", "off"))]
    for kind in order:
        db = common.fresh_database(base, f"feed_{kind}")
        load = common.machine()["load_avg"]
        r = asyncio.run(fold.apply_all(db, ends, batch=batch, feed=kind == "on"))
        assert db.database_url
        with psycopg.connect(db.database_url) as conn:
            row = conn.execute("SELECT count(*) FROM entitled.changes").fetchone()
        r.update(change_rows=int(row[0]) if row else 0, load_avg=load)
        runs[kind].append(r)
        print(f"fold feed {kind}: {r}", flush=True)
    median = {k: statistics.median(r["events_per_s"] for r in v) for k, v in runs.items()}
    return {
        "fill": fill,
        "batch": batch,
        "runs": runs,
        "median_events_per_s": median,
        "feed_cost_share": round(1 - median["on"] / median["off"], 4),
    }


# -- webhook to change ------------------------------------------------------------------


def _signed(events: list[dict[str, Any]]) -> list[tuple[bytes, str]]:
    from launcher.stripe import events as se

    return [(b := se.encode(e), se.sign_header(b, SECRET)) for e in events]


async def _post_all(
    url: str, bodies: list[tuple[bytes, str]], start: float, rate: float
) -> tuple[list[float], dict[int, int]]:
    """Post open-loop (body i due at start + i/rate); the answer times and statuses."""
    import aiohttp

    acked = [0.0] * len(bodies)
    statuses: dict[int, int] = {}

    async def post(session: aiohttp.ClientSession, i: int) -> None:
        await asyncio.sleep(max(0.0, start + i / rate - time.time()))
        body, sig = bodies[i]
        headers = {"Stripe-Signature": sig, "Content-Type": "application/json"}
        async with session.post(url, data=body, headers=headers) as r:
            await r.read()
            statuses[r.status] = statuses.get(r.status, 0) + 1
        acked[i] = time.time()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
        await asyncio.gather(*(post(session, i) for i in range(len(bodies))))
    return acked, statuses


async def _consume(settings: Settings, arrivals: dict[str, float], stop: asyncio.Event) -> None:
    from aiokafka import AIOKafkaConsumer

    from entitled.kafka import client_options

    consumer = AIOKafkaConsumer(
        settings.changes_topic,
        **client_options(settings),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=50)
            now = time.time()
            for records in batches.values():
                for r in records:
                    arrivals.setdefault((r.key or b"").decode(), now)
    finally:
        await consumer.stop()


async def _latency(
    settings: Settings, ingest_url: str, api_url: str, rate: float, seconds: float, warmup: float
) -> dict[str, Any]:
    from entitled.topics import ensure_changes_topic
    from launcher.workload import Workload

    await ensure_changes_topic(settings)
    topic_at: dict[str, float] = {}
    stop = asyncio.Event()
    consumer = asyncio.create_task(_consume(settings, topic_at, stop))
    page = browser = pw = None
    if api_url:
        from playwright.async_api import async_playwright

        pw = await async_playwright().start()
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await browser.new_page()
        await page.goto(f"{api_url}/healthz")
        await page.evaluate(_OPEN_STREAM)
    try:
        # the catalogue first (the `action` package), caught up before the clock starts
        catalogue = _signed(list(Workload(customers=1).catalogue()))
        _, statuses = await _post_all(ingest_url, catalogue, time.time(), 1000.0)
        assert statuses == {200: len(catalogue)}, statuses
        await _wait_folded(settings)
        n = int(rate * (warmup + seconds))
        subs = common.new_subscribers(n, time.strftime("%H%M%S"), "chg")
        start = time.time() + 0.5
        acked, statuses = await _post_all(ingest_url, _signed([e for _, e in subs]), start, rate)
        customers = [c for c, _ in subs]
        deadline = time.monotonic() + 30
        sse_at: dict[str, float] = {}
        while time.monotonic() < deadline:
            if page is not None:
                sse_at = {c: t for c, t in await page.evaluate("() => window.arrivals")}
            if all(c in topic_at for c in customers) and (
                page is None or all(c in sse_at for c in customers)
            ):
                break
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await consumer
        if browser is not None and pw is not None:
            await browser.close()
            await pw.stop()
    due = {c: start + i / rate for i, c in enumerate(customers)}
    kept = [c for c in customers if due[c] >= start + warmup]
    out: dict[str, Any] = {
        "rate": rate,
        "seconds": seconds,
        "warmup_seconds": warmup,
        "posted": n,
        "statuses": {str(k): v for k, v in statuses.items()},
        "post_to_ack": common.percentiles(
            [acked[i] - due[c] for i, c in enumerate(customers) if c in kept]
        ),
        "topic": {
            "arrived": sum(c in topic_at for c in customers),
            **common.percentiles([topic_at[c] - due[c] for c in kept if c in topic_at]),
        },
    }
    if page is not None:
        out["sse_browser"] = {
            "arrived": sum(c in sse_at for c in customers),
            **common.percentiles([sse_at[c] - due[c] for c in kept if c in sse_at]),
        }
    return out


async def _wait_folded(settings: Settings, timeout: float = 60) -> None:
    import psycopg

    assert settings.database_url
    ends = await common.end_offsets(settings)
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        while time.monotonic() < deadline:
            cur = await conn.execute(
                "SELECT partition, next_offset FROM live.checkpoints WHERE topic = %s",
                (settings.topic,),
            )
            points: dict[int, int] = dict(await cur.fetchall())
            if all(points.get(p, 0) >= e for p, e in ends.items()):
                return
            await asyncio.sleep(0.1)
    raise RuntimeError("the worker did not fold the catalogue in time")


def latency_run(
    base: Settings, log_dir: Path, rate: float, seconds: float, warmup: float, browser: bool
) -> dict[str, Any]:
    tag = base.topic.rsplit(".", 1)[-1]
    settings = dataclasses.replace(
        common.fresh_database(base, "latency"),
        topic=f"{base.topic}.live",
        changes_topic=f"bench.feed.{tag}",  # not bench.changes.<tag>: the event topic
        webhook_secrets=(SECRET,),
    )
    extra = {"ENTITLED_CHANGES_TOPIC": settings.changes_topic}
    migrate = common.spawn(settings, "migrate", log=log_dir / "migrate.log", **extra)
    if migrate.wait(120) != 0:
        raise RuntimeError(f"entitled migrate failed (see {log_dir / 'migrate.log'})")
    ingest_port, api_port = fold._free_port(), fold._free_port()
    procs = {
        "ingest": ("ingest", "--port", str(ingest_port), "--log-level", "warning"),
        "worker": ("worker",),
        "relay": ("relay",),
        **({"api": ("api", "--port", str(api_port), "--log-level", "warning")} if browser else {}),
    }
    running = {
        name: common.spawn(settings, *args, log=log_dir / f"{name}.log", **extra)
        for name, args in procs.items()
    }
    try:
        ingest_url = f"http://127.0.0.1:{ingest_port}"
        api_url = f"http://127.0.0.1:{api_port}" if browser else ""
        common.wait_http(f"{ingest_url}/readyz", running["ingest"], "ingest")
        if browser:
            common.wait_http(f"{api_url}/readyz", running["api"], "api")
        return asyncio.run(
            _latency(settings, f"{ingest_url}/webhooks/stripe", api_url, rate, seconds, warmup)
        )
    finally:
        for proc in running.values():
            common.stop(proc)


# -- main --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=40_000, help="events of the fold runs")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2, help="feed off/on pairs")
    parser.add_argument("--rate", type=float, default=200.0, help="webhooks/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured posting time")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--no-browser", action="store_true", help="no SSE-in-chromium figure")
    args = parser.parse_args()

    report: dict[str, Any] = {"args": vars(args), "goals": GOALS}
    load: dict[str, Any] = {"start": common.machine()}
    log_dir = Path(tempfile.mkdtemp(prefix="entitled-bench-changes-logs-"))
    with common.bench_settings("changes") as base:
        print(f"latency: webhooks at {args.rate}/s to the change topic ...", flush=True)
        load["latency"] = common.machine()["load_avg"]
        report["latency"] = latency_run(
            base, log_dir, args.rate, args.seconds, args.warmup, not args.no_browser
        )
        print(f"latency: {report['latency']}", flush=True)
        load["fold"] = common.machine()["load_avg"]
        report["fold"] = fold_feed(base, args.events, args.batch, args.rounds)
    load["end"] = common.machine()
    report["machine"] = load
    report["logs"] = str(log_dir)
    lat, cost = report["latency"], report["fold"]["feed_cost_share"]
    report["met"] = {
        "p99_ms_topic_at_200_per_s": lat["topic"]["p99_ms"] < GOALS["p99_ms_topic_at_200_per_s"],
        "feed_cost_share": cost < GOALS["feed_cost_share"],
    }
    path = common.write_results("changes", report)

    print(
        f"\nwebhook->topic at {lat['rate']}/s: p50 {lat['topic']['p50_ms']} ms,"
        f" p99 {lat['topic']['p99_ms']} ms, max {lat['topic']['max_ms']} ms"
        f" ({lat['topic']['arrived']}/{lat['posted']} arrived)"
    )
    if "sse_browser" in lat:
        sse = lat["sse_browser"]
        print(
            f"webhook->SSE in chromium: p50 {sse['p50_ms']} ms, p99 {sse['p99_ms']} ms,"
            f" max {sse['max_ms']} ms ({sse['arrived']}/{lat['posted']} arrived)"
        )
    med = report["fold"]["median_events_per_s"]
    print(f"fold events/s: feed off {med['off']}, on {med['on']}: the feed costs {cost:.1%}")
    print(f"load avg: {load}")
    print(f"goals met: {report['met']}; written {path}")


if __name__ == "__main__":
    main()
