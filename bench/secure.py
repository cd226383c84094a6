"""What TLS and SASL cost: bench/ingest.py and bench/fold.py side by side against a PLAINTEXT
system and a secure one (Kafka SASL_SSL with SCRAM-SHA-512, PostgreSQL with TLS and
`sslmode=verify-full`), in one run.

Both systems are local services started here (`services.up` and `services.up(secure=True)`,
two temp homes, both running for the whole run). Each round measures, plain then secure:
  * `ingest`  - bench/ingest.py's real ingest app (closed loop, then 200/s open loop);
  * `parse`   - bench/fold.py's read of the whole topic + parse (the Kafka read path);
  * `inproc`  - bench/fold.py's `ProjectionStore.apply` in batches (Kafka read + Postgres);
  * `worker`  - bench/fold.py's real `entitled worker` to the log end.
Rounds alternate the two systems so that drifting machine load hits both alike.

    .venv/bin/python bench/secure.py [--events 30000] [--rounds 2] [--seconds 6]

Prints the figures and the secure/plain ratios; writes `bench/results/secure.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

_HERE = Path(__file__).parent.resolve()
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench import _common as common  # noqa: E402
from bench import fold as fold_bench  # noqa: E402
from bench import ingest as ingest_bench  # noqa: E402
from entitled.settings import Settings  # noqa: E402

SECRET = "whsec_bench_secret"
KINDS = ("plain", "secure")


def _system(kind: str) -> tuple[Settings, Path]:
    from launcher import services

    home = Path(tempfile.mkdtemp(prefix=f"entitled-bench-{kind}-"))
    home.chmod(0o755)  # the postgres user must traverse it
    base = Settings(home=home, cache=Settings().cache, webhook_secrets=(SECRET,))
    print(f"starting the {kind} services in {home} ...", flush=True)
    ep = services.up(base, secure=kind == "secure", fast=True)
    settings = dataclasses.replace(ep.kafka_settings(base), database_url=ep.database_url)
    return settings, home


def _fresh_topic(settings: Settings, label: str) -> Settings:
    from entitled.crypto import new_master_key

    tag = uuid.uuid4().hex[:8]
    # every writer seals (issue 20): a master key and a keys topic of its own, both systems
    return dataclasses.replace(
        settings,
        topic=f"bench.{label}.{tag}",
        consumer_group=f"bench-{label}-{tag}",
        master_key=new_master_key(),
        keys_topic=f"bench.{label}.{tag}.keys",
    )


def _ingest(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from entitled.topics import ensure_event_topic

    settings = _fresh_topic(settings, "ingest")
    asyncio.run(ensure_event_topic(settings))
    run = {"seconds": args.seconds, "connections": args.connections, "rate_seconds": 6.0}
    result = ingest_bench._run("ingest", settings, run)
    return {
        "events_per_s": result["throughput"]["events_per_s"],
        "p50_ms": result["throughput"]["p50_ms"],
        "p99_ms": result["throughput"]["p99_ms"],
        "rate_200_p99_ms": result["fixed_rate"]["p99_ms"],
        "server_cpu_us_per_request": result["server_cpu_us_per_request"],
    }


def _fold(settings: Settings, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    settings = _fresh_topic(settings, "fold")
    fill = common.fill_topic(settings, args.events, seed=7)  # the same events for both
    ends = asyncio.run(common.end_offsets(settings))
    events = sum(ends.values())
    # CPU time per event as well as events/s: on a shared, loaded machine the wall-clock
    # rates move with everyone else's work, the CPU spent per event much less.
    cpu = time.process_time()
    parse = asyncio.run(fold_bench.parse_all(settings, ends))
    parse_cpu = time.process_time() - cpu
    cpu = time.process_time()
    inproc = asyncio.run(
        fold_bench.apply_all(common.fresh_database(settings, "inproc"), ends, batch=500)
    )
    inproc_cpu = time.process_time() - cpu
    worker_settings = common.fresh_database(settings, "worker")
    worker, proc = fold_bench.worker_run(worker_settings, ends, log_dir, 900.0)
    worker_cpu = ingest_bench._cpu_seconds(proc.pid)  # start-up included
    common.stop(proc)
    return {
        "parse_cpu_us_per_event": round(parse_cpu / events * 1e6, 1),
        "inproc_cpu_us_per_event": round(inproc_cpu / events * 1e6, 1),
        "worker_cpu_us_per_event": round(worker_cpu / events * 1e6, 1),
        "fill_events_per_s": fill["events_per_s"],
        "parse_events_per_s": parse["events_per_s"],
        "inproc_events_per_s": inproc["events_per_s"],
        "worker_events_per_s": worker["events_per_s"],
        "worker_startup_s": worker["startup_s"],
    }


def _median(rounds: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in rounds), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=30_000, help="events per fold round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0, help="ingest closed-loop run")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    # `timeout` or Ctrl-C: still stop both systems (the finally below) instead of leaving
    # two Kafkas and two Postgres running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    log_dir = Path(tempfile.mkdtemp(prefix="entitled-bench-secure-logs-"))
    systems: dict[str, tuple[Settings, Path]] = {}
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        k: {"ingest": [], "fold": []} for k in KINDS
    }
    started = time.monotonic()
    try:
        for kind in KINDS:
            systems[kind] = _system(kind)
        steps: list[tuple[str, Callable[[Settings], dict[str, Any]]]] = [
            ("ingest", lambda s: _ingest(s, args)),
            ("fold", lambda s: _fold(s, args, log_dir)),
        ]
        for n in range(args.rounds):
            for what, step in steps:
                # plain first in even rounds, secure first in odd ones
                for kind in KINDS if n % 2 == 0 else KINDS[::-1]:
                    print(f"round {n + 1}/{args.rounds}: {what} on {kind} ...", flush=True)
                    result = step(systems[kind][0])
                    result["load_avg_1m"] = round(common.machine()["load_avg"][0], 2)
                    results[kind][what].append(result)
                    print(f"  {result}", flush=True)
    finally:
        from launcher import services

        for settings, home in systems.values():
            services.down(settings, wipe=True)
            shutil.rmtree(home, ignore_errors=True)

    medians = {
        kind: {
            key: _median(results[kind][what], key)
            for what in ("ingest", "fold")
            for key in results[kind][what][0]
            if key != "load_avg_1m"
        }
        for kind in KINDS
    }
    ratios = {
        key: round(medians["secure"][key] / medians["plain"][key], 3)
        for key in medians["plain"]
        if medians["plain"][key]
    }
    report = {
        "args": vars(args),
        "machine": common.machine(),
        "seconds": round(time.monotonic() - started, 1),
        "medians": medians,
        "secure_to_plain": ratios,
        "rounds": results,
        "logs": str(log_dir),
    }
    path = common.write_results("secure", report)
    print(f"\nmedians of {args.rounds} round(s); secure = Kafka SASL_SSL/SCRAM + Postgres TLS")
    print(f"{'':28}{'plain':>10}{'secure':>10}{'ratio':>8}")
    for key in medians["plain"]:
        print(
            f"{key:28}{medians['plain'][key]:>10}{medians['secure'][key]:>10}"
            f"{ratios.get(key, float('nan')):>8}"
        )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
