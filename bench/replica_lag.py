"""Replica lag under webhook load: how far two streaming replicas trail the primary while
`entitled ingest` takes `--rate` webhooks/s and `entitled worker` folds them.

    .venv/bin/python bench/replica_lag.py [--rate 200] [--seconds 30] [--replicas 2]

Local Kafka and Postgres in a temp home (wiped after), N replicas of that Postgres. Every
0.2 s the replay lag of each replica is sampled (seconds: age of the last replayed
transaction, 0 when it replayed all it received; bytes: the primary's WAL position minus the
replica's replay position). Also: for every 20th event, the time from the webhook's 200 to
the event being visible on every replica (`live.processed_events`), which is what a
`min_event` read on a replica waits for. Writes `bench/results/replica_lag.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).parent.resolve()
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import httpx  # noqa: E402
import psycopg  # noqa: E402

from bench import _common as common  # noqa: E402
from launcher import services  # noqa: E402
from launcher.stripe import events as se  # noqa: E402
from projections import replication  # noqa: E402

SECRET = "whsec_bench_replica_lag"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _figures(values: list[float], digits: int = 1) -> dict[str, float]:
    if len(values) < 2:
        return {}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "p50": round(q[49], digits),
        "p99": round(q[98], digits),
        "max": round(max(values), digits),
    }


def _events(n: int) -> list[dict[str, Any]]:
    now = int(time.time())
    product = se.product("prod_lag", groups="action", created=now - 10)
    out = [se.event("product.created", product, created=now - 10)]
    for i in range(n):
        sub = se.subscription(
            f"sub_lag{i:06d}", customer=f"cus_lag{i:06d}", items=[("price_lag", "prod_lag")]
        )
        out.append(se.event("customer.subscription.created", sub, created=now))
    return out


async def _post(url: str, events: list[dict[str, Any]], rate: float) -> dict[str, float]:
    """Open loop: event i is due at start + i/rate, posted by one of 64 senders (a bounded
    number in flight keeps the client cheap); the time of each 200, by event id."""
    acked: dict[str, float] = {}
    bodies = [(e["id"], se.encode(e)) for e in events]
    todo = iter(range(len(bodies)))
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        start = time.monotonic()

        async def sender() -> None:
            for i in todo:
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
                event_id, body = bodies[i]
                headers = {"Stripe-Signature": se.sign_header(body, SECRET)}
                for _ in range(20):
                    r = await client.post(url, content=body, headers=headers)
                    if r.status_code == 200:
                        acked[event_id] = time.monotonic()
                        break
                    await asyncio.sleep(0.2)

        await asyncio.gather(*(sender() for _ in range(64)))
    return acked


async def _sample(primary: str, replicas: list[str], stop: asyncio.Event) -> list[dict[str, Any]]:
    samples = []
    conns = [await psycopg.AsyncConnection.connect(u, autocommit=True) for u in replicas]
    head = await psycopg.AsyncConnection.connect(primary, autocommit=True)
    try:
        while not stop.is_set():
            top = replication.lsn_position(await replication.primary_lsn(head))
            for i, conn in enumerate(conns, 1):
                lag = await replication.replica_lag(conn)
                behind = top - replication.lsn_position(lag.replay_lsn or "0/0")
                samples.append({"replica": i, "seconds": lag.seconds, "bytes": max(0, behind)})
            await asyncio.sleep(0.2)
    finally:
        for conn in [*conns, head]:
            await conn.close()
    return samples


async def _visible(replicas: list[str], ids: list[str], timeout: float) -> dict[str, float]:
    """When each of `ids` is first visible on every replica."""
    seen: dict[str, float] = {}
    conns = [await psycopg.AsyncConnection.connect(u, autocommit=True) for u in replicas]
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < len(ids) and time.monotonic() < deadline:
            pending = [i for i in ids if i not in seen]
            everywhere = set(pending)
            for conn in conns:
                cur = await conn.execute(
                    "SELECT event_id FROM live.processed_events WHERE event_id = ANY(%s)",
                    (pending,),
                )
                everywhere &= {r[0] for r in await cur.fetchall()}
            now = time.monotonic()
            for i in everywhere:
                seen[i] = now
            await asyncio.sleep(0.02)
    finally:
        for conn in conns:
            await conn.close()
    return seen


async def _run(primary: str, replicas: list[str], ingest: str, args: Any) -> dict[str, Any]:
    events = _events(int(args.rate * args.seconds))
    tracked = [e["id"] for e in events[1::20]]
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample(primary, replicas, stop))
    watcher = asyncio.create_task(_visible(replicas, tracked, args.seconds + 120))
    started = time.monotonic()
    acked = await _post(f"{ingest}/webhooks/stripe", events, args.rate)
    posted_s = time.monotonic() - started
    seen = await watcher
    stop.set()
    samples = await sampler
    delays = [seen[i] - acked[i] for i in tracked if i in seen and i in acked]
    return {
        "events": len(events),
        "acked": len(acked),
        "posting_seconds": round(posted_s, 1),
        "achieved_rate": round(len(acked) / posted_s, 1),
        "lag_seconds": _figures([s["seconds"] for s in samples], 3),
        "lag_bytes": _figures([float(s["bytes"]) for s in samples], 0),
        "webhook_to_visible_on_replicas_ms": _figures([d * 1000 for d in delays], 0),
        "tracked": len(tracked),
        "visible": len(delays),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()
    with common.bench_settings("lag") as base:
        settings = common.fresh_database(base, "lag")
        settings = dataclasses.replace(settings, webhook_secrets=(SECRET,))
        assert settings.database_url
        asyncio.run(common.migrate(settings.database_url))
        name = settings.database_url.rsplit("/", 1)[1]
        replicas = [
            f"{u.rsplit('/', 1)[0]}/{name}" for u in services.up_replicas(settings, args.replicas)
        ]
        logs = Path(tempfile.mkdtemp(prefix="bench-lag-"))
        port = _free_port()
        ingest = common.spawn(settings, "ingest", "--port", str(port), log=logs / "ingest.log")
        worker = common.spawn(settings, "worker", log=logs / "worker.log")
        try:
            url = f"http://127.0.0.1:{port}"
            common.wait_http(f"{url}/readyz", ingest, "entitled ingest")
            result = asyncio.run(_run(settings.database_url, replicas, url, args))
        finally:
            common.stop(worker)
            common.stop(ingest)
    report = {"machine": common.machine(), "params": vars(args), **result}
    path = common.write_results("replica_lag", report)
    print(report)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
