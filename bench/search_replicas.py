"""`bench/search.py --replicas N`: searches against the primary alone versus the primary
plus N streaming replicas, in one run on one loaded database.

- api primary:  `entitled api` with DATABASE_URL only (today's deployment);
- api replicas: a second `entitled api` with ENTITLED_READ_DATABASE_URL = the N replicas;
- raw primary / raw spread: the search statement through psycopg, all connections on the
  primary versus spread over the replicas (the database side alone, without the API).

Slices of the four alternate so that each sees the same background load. On a small box
every server (primary, replicas, API, load generator) shares the same cores: the figures
show the cost of the routing more than any gain from replicas, which needs cores of its own.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench import _common as common
from bench.search import (
    ENTITLED,
    Run,
    free_port,
    merge,
    print_run,
    process,
    run_http,
    run_raw,
)


async def run_spread(
    urls: Sequence[str], queries: Sequence[tuple[str, str]], concurrency: int, seconds: float
) -> Run:
    """`run_raw` with the connections spread over `urls` in turn."""
    parts = await asyncio.gather(
        *(
            run_raw(urls[k % len(urls)], queries[k::concurrency], 1, seconds)
            for k in range(concurrency)
        )
    )
    return Run(
        "raw-spread",
        sum(p.requests for p in parts),
        max(p.seconds for p in parts),
        [ms for p in parts for ms in p.latencies_ms],
    )


def _replayed(primary: str, replicas: Sequence[str]) -> None:
    """Wait until every replica has replayed the loaded data (same movie count)."""

    def count(url: str) -> int:
        try:
            with psycopg.connect(url, connect_timeout=3) as conn:
                row = conn.execute("SELECT count(*) FROM entitled.movies").fetchone()
        except psycopg.Error:
            return -1
        return int(row[0]) if row else -1

    want = count(primary)
    deadline = time.monotonic() + 300
    while any(count(r) != want for r in replicas):
        if time.monotonic() > deadline:
            raise SystemExit("the replicas did not replay the loaded data within 300 s")
        time.sleep(0.5)


def _metrics(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        if line.startswith(("entitled_api_reads_total", "entitled_api_replica_lag")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def compare(
    url: str,
    replicas: Sequence[str],
    queries: Sequence[tuple[str, str]],
    paths: Sequence[str],
    args: Any,
    workdir: Path,
) -> dict[str, Any]:
    _replayed(url, replicas)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTITLED_")}
    env["DATABASE_URL"] = url
    env_r = {**env, "ENTITLED_READ_DATABASE_URL": ",".join(replicas)}
    p_port, r_port = free_port(), free_port()
    cmd = [ENTITLED, "api", "--log-level", "warning", "--port"]
    with (
        process([*cmd, str(p_port)], env, workdir / "api-primary.log") as api_p,
        process([*cmd, str(r_port)], env_r, workdir / "api-replicas.log") as api_r,
    ):
        common.wait_http(f"http://127.0.0.1:{p_port}/readyz", api_p, "entitled api (primary)")
        common.wait_http(f"http://127.0.0.1:{r_port}/readyz", api_r, "entitled api (replicas)")
        for port in (p_port, r_port):  # warm both
            asyncio.run(run_http(port, paths[:2000], args.concurrency, 1.0))
        slices: dict[str, list[Run]] = {k: [] for k in ("api-primary", "api-replicas", "raw")}
        slices["raw-spread"] = []
        slice_s = args.seconds / args.rounds
        for r in range(args.rounds):
            part = slice(r, None, args.rounds)
            c = args.concurrency
            slices["api-primary"].append(asyncio.run(run_http(p_port, paths[part], c, slice_s)))
            slices["api-replicas"].append(asyncio.run(run_http(r_port, paths[part], c, slice_s)))
            slices["raw"].append(asyncio.run(run_raw(url, queries[part], c, slice_s)))
            slices["raw-spread"].append(
                asyncio.run(run_spread(replicas, queries[part], c, slice_s))
            )
        scraped = _metrics(r_port)
    runs = {name: merge(name, parts) for name, parts in slices.items()}
    for run in runs.values():
        print_run(run)
    p, rr = runs["api-primary"], runs["api-replicas"]
    return {
        "replicas": len(replicas),
        "cpus": os.cpu_count(),
        "runs": {name: run.summary() for name, run in runs.items()},
        "api_replicas_vs_primary": round(rr.throughput / p.throughput, 3),
        "raw_spread_vs_primary": round(runs["raw-spread"].throughput / runs["raw"].throughput, 3),
        "api_replicas_metrics": scraped,
        "note": "primary, replicas, both APIs and the load generator share the same cores",
    }


__all__ = ["compare", "run_spread"]
