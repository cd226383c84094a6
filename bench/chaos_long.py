"""The long chaos run: 100,000 webhooks through the real system while a worker (of two) is
SIGKILLed and Kafka and Postgres restart; figures go to `bench/results/chaos.json`, and each
worker kill prints its failover (`FAILOVER worker_kill at Ts: X s`: until every partition
folds again on the survivor; `recovery_s.failover` in the JSON).

It runs the suite's chaos test (`tests/chaos/test_chaos.py`) with bigger numbers, in its
own pytest process with its own session services (so it never touches anyone else's):

    .venv/bin/python bench/chaos_long.py [--events 100000] [--rate 200] [--seed 7]
        [--worker-kills 5] [--kafka-restarts 2] [--postgres-restarts 2] [--workers 2]
        [--session-timeout S]

`--session-timeout 6` measures the failover a system running the defaults gets (the tests,
and this run without it, use 2 s: docs/operations.md, "Kafka group settings").

It runs the test rather than importing it: `bench/` never imports the tests. Exit status
is pytest's (0: every invariant held). The JSON is written in both cases.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "chaos.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=200.0, help="webhooks per second")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--worker-kills", type=int, default=5)
    parser.add_argument("--kafka-restarts", type=int, default=2)
    parser.add_argument("--postgres-restarts", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="1: the replacement takes over")
    parser.add_argument("--session-timeout", type=float, help="the workers' Kafka session (s)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        CHAOS_EVENTS=str(args.events),
        CHAOS_RATE=str(args.rate),
        CHAOS_SEED=str(args.seed),
        CHAOS_WORKER_KILLS=str(args.worker_kills),
        CHAOS_KAFKA_RESTARTS=str(args.kafka_restarts),
        CHAOS_POSTGRES_RESTARTS=str(args.postgres_restarts),
        CHAOS_WORKERS=str(args.workers),
        CHAOS_RESULTS=str(args.out.resolve()),
        CHAOS_TIMEOUT="7200",
        CHAOS_SESSION_S=str(args.session_timeout or ""),
    )
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "tests/chaos/test_chaos.py::test_chaos",
        "-q",
        "-s",
        "-p",
        "no:cacheprovider",
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
