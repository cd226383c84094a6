"""Change feed over HTTP benchmark: a change row's commit -> its arrival at Server-Sent Events
clients and at a long-poll loop.

    .venv/bin/python bench/feed_http.py [--streams 50] [--changes 300] [--rate 100]

`entitled api` runs as a subprocess on a fresh, migrated database. This process opens
`--streams` event streams (`/v1/changes/stream`) and one long-poll loop (`/v1/changes`, the
cursor passed on), then writes `--changes` change rows at `--rate` per second through the
writer's own `projections.changes.record` (the commit-order lock and the NOTIFY), one
transaction each, noting the time of each commit. Latency = arrival - commit on this
machine's clock. It also reports the API's pool statistics while the streams were open: idle
streams hold no pooled connection.

It measures the HTTP leg only; webhook -> change row is the fold's (bench/fold.py), and the
whole webhook -> browser path is the issue's bench/changes.py. Postgres: DATABASE_URL if set,
else local services under a temporary home. Writes `bench/results/feed_http.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx

# Run as `python bench/feed_http.py`, this folder comes first on sys.path: replace it by the
# repo (as bench/fold.py does).
_HERE = Path(__file__).parent.resolve()
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench import _common as common  # noqa: E402


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _stream(
    client: httpx.AsyncClient, arrivals: dict[int, list[float]], ready: asyncio.Event
) -> None:
    async with client.stream("GET", "/v1/changes/stream", params={"after": 0}) as response:
        event = None
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
                if event == "ready":
                    ready.set()
            elif line.startswith("id: ") and event is None:
                pass
            elif line.startswith("data: ") and event == "change":
                arrivals.setdefault(json.loads(line[6:])["id"], []).append(time.time())
            elif line == "":
                event = None


async def _long_poll(client: httpx.AsyncClient, arrivals: dict[int, float], total: int) -> None:
    after = 0
    while len(arrivals) < total:
        body = (await client.get("/v1/changes", params={"after": after, "wait": 30})).json()
        now = time.time()
        for change in body["changes"]:
            arrivals[change["id"]] = now
        after = body["next"]


def _pool(text: str) -> dict[str, float]:
    return {
        m[1]: float(m[2])
        for m in re.finditer(r'^entitled_api_pool{stat="(\w+)"} (\S+)$', text, re.M)
    }


async def _run(
    url: str, database_url: str, streams: int, changes: int, rate: float
) -> dict[str, Any]:
    import psycopg

    from projections import changes as feed_rows
    from projections.model.entitlements import Entitlement

    sse: dict[int, list[float]] = {}
    polled: dict[int, float] = {}
    committed: dict[int, float] = {}
    timeout = httpx.Timeout(10, read=60)
    limits = httpx.Limits(max_connections=streams + 10)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        readies = [asyncio.Event() for _ in range(streams)]
        tasks = [asyncio.create_task(_stream(client, sse, r)) for r in readies]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
        poller = asyncio.create_task(_long_poll(client, polled, changes))
        await asyncio.sleep(1.0)  # let the first long-poll and the streams settle into waiting
        idle_pool = _pool((await client.get("/metrics")).text)

        conn = await psycopg.AsyncConnection.connect(database_url)
        async with conn:
            start = time.monotonic()
            for n in range(changes):
                await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
                change = feed_rows.Change(
                    f"cus_bench_{n}", Entitlement((), ()), Entitlement(("action",), ()), "evt_b", 1
                )
                async with conn.transaction():
                    last = await feed_rows.record(conn, "entitled_v1", [change], "event")
                committed[int(last or 0)] = time.time()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            len(polled) < changes or sum(len(v) for v in sse.values()) < changes * streams
        ):
            await asyncio.sleep(0.1)
        busy_pool = _pool((await client.get("/metrics")).text)
        poller.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(poller, *tasks, return_exceptions=True)

    sse_lat = [t - committed[i] for i, ts in sse.items() if i in committed for t in ts]
    poll_lat = [t - committed[i] for i, t in polled.items() if i in committed]
    return {
        "sse": {
            "received": len(sse_lat),
            "expected": changes * streams,
            **common.percentiles(sse_lat),
        },
        "long_poll": {
            "received": len(poll_lat),
            "expected": changes,
            **common.percentiles(poll_lat),
        },
        "pool_with_idle_streams": idle_pool,
        "pool_after": busy_pool,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--changes", type=int, default=300)
    parser.add_argument("--rate", type=float, default=100.0, help="change rows per second")
    args = parser.parse_args()
    with common.bench_settings("feed") as base:
        settings = common.fresh_database(base, "feed")
        assert settings.database_url
        asyncio.run(common.migrate(settings.database_url))
        port = _free_port()
        log = Path(settings.home) / "bench-feed-api.log"
        api = common.spawn(settings, "api", "--port", str(port), "--log-level", "warning", log=log)
        url = f"http://127.0.0.1:{port}"
        try:
            common.wait_http(f"{url}/readyz", api, f"the api (see {log})")
            figures = asyncio.run(
                _run(url, settings.database_url, args.streams, args.changes, args.rate)
            )
        finally:
            common.stop(api)
    report = {"args": vars(args), "machine": common.machine(), **figures}
    path = common.write_results("feed_http", report)
    print(json.dumps(report, indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    main()
