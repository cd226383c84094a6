"""Benchmark a replay's swap alone (issue 21: a replay of 1M events peaks at <= 300 MB RSS).

`bench/replay.py` replays into a fresh database whose live version is empty, so every
customer differs at the swap (228,889 at 1M events): the swap gate's comparison and the
swap's change rows were then the largest part of the replay's peak RSS. This bench builds
such a pair of versions directly in SQL (an empty live version; a ready one holding
`--customers` customers' entitlements) and runs the real judge-and-swap of a replay
(`processors.replay._swap_if_allowed`, forced: the bench's topic is empty, which the gate
refuses) in a child process: the child's RSS before the swap and its peak (VmHWM) after,
its CPU, Postgres's CPU, and the change rows written. With `--against DIR`, the same in a
child of another checkout (its own .venv and code: a git worktree of main, say), on a
fresh pair of versions of its own, alternating with this tree's in each round.

    .venv/bin/python bench/swap.py [--customers 228889] [--rounds 2] [--against DIR]

Uses KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL when set, else starts the local services in a
temp home. Writes `bench/results/swap.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

_HERE = Path(__file__).parent.resolve()
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench import _common as common  # noqa: E402
from entitled.settings import Settings  # noqa: E402

GOALS = {"peak_rss_mb": 300}  # of the whole replay; the swap's share of it is measured here

# The ready version's entitlements, one row per customer: one or two of eight groups, up to
# two movies bought, the event behind them (sizes like those of bench/replay.py's build).
_FILL = """
INSERT INTO {table} (customer, groups, movie_ids, as_of_event, as_of_created)
SELECT 'cus_' || substr(md5(i::text), 1, 14),
       (ARRAY['action','comedy','drama','kids','thriller','horror','docs','anime'])
           [1 + i %% 8 : 1 + i %% 8 + (i / 8) %% 2],
       CASE WHEN i %% 5 = 0 THEN ARRAY[(i %% 997)::text, (i %% 89)::text]
            WHEN i %% 3 = 0 THEN ARRAY[(i %% 997)::text] ELSE '{{}}' END,
       'evt_' || substr(md5('e' || i), 1, 24), 1700000000 + i
  FROM generate_series(1, %s) AS i
"""

# Run by the checkout's own interpreter: judge and swap version 2 in, forced.
_SWAP = """
import asyncio, json, resource, sys, time
from entitled.settings import Settings
from processors import replay

def status():
    fields = dict(l.split(":", 1) for l in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}

async def main():
    settings = Settings.from_env()
    report = replay.ReplayReport(2, sys.argv[1])
    before = status()
    cpu = time.process_time()
    t0 = time.perf_counter()
    await replay._swap_if_allowed(settings, report, force=True)
    print(json.dumps({
        "swapped": report.swapped,
        "swap_seconds": round(time.perf_counter() - t0, 2),
        "swap_cpu_s": round(time.process_time() - cpu, 2),
        "rss_before_mb": round(before["VmRSS"], 1),
        "peak_before_mb": round(before["VmHWM"], 1),
        "peak_after_mb": round(status()["VmHWM"], 1),
        "peak_rusage_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))

asyncio.run(main())
"""


async def _prepare(database_url: str, customers: int) -> str:
    """Migrate (live = an empty v1), then a ready v2 holding `customers` customers."""
    import psycopg
    from psycopg import sql

    from projections import versions

    await common.migrate(database_url)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        version, schema = await versions.create(conn, "bench swap", carry_from=None)
        assert version == 2
        await conn.execute(
            sql.SQL(_FILL).format(table=sql.Identifier(schema, "customer_entitlements")),
            (customers,),
        )
        await versions.mark_ready(conn, version)
        await conn.execute(
            sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "customer_entitlements"))
        )
    return schema


def _changes(database_url: str) -> int:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM entitled.changes").fetchone()
    return int(row[0]) if row else 0


def one_swap(base: Settings, tree: Path, customers: int, label: str) -> dict[str, Any]:
    settings = common.fresh_database(base, f"swap_{label}")
    assert settings.database_url
    schema = asyncio.run(_prepare(settings.database_url, customers))
    pg = common.postmaster_pid(settings.database_url)
    pg_cpu = common.cpu_with_children(pg)
    load = common.machine()["load_avg"]
    done = subprocess.run(
        [str(tree / ".venv" / "bin" / "python"), "-c", _SWAP, schema],
        cwd=tree,
        env={**common.environment(settings), "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the swap of {tree} failed:\n{done.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    out["postgres_cpu_s"] = round(common.cpu_with_children(pg) - pg_cpu, 2)
    out["change_rows"] = _changes(settings.database_url)
    out["load_avg"] = load
    out["swap_rss_mb"] = round(out["peak_after_mb"] - out["rss_before_mb"], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=228_889)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--against", default=None, help="another checkout, side by side")
    args = parser.parse_args()
    trees = {"new": _HERE.parent}
    if args.against:
        trees["old"] = Path(args.against).resolve()

    report: dict[str, Any] = {"args": vars(args), "goals": GOALS, "runs": []}
    with common.bench_settings("swap") as base:
        from entitled.topics import ensure_event_topic

        asyncio.run(ensure_event_topic(base))
        for n in range(args.rounds):
            # alternate who goes first: each meets the machine's load in turn
            for label in list(trees) if n % 2 == 0 else list(reversed(trees)):
                run = one_swap(base, trees[label], args.customers, label)
                run.update(tree=label, round=n + 1)
                report["runs"].append(run)
                print(json.dumps(run), flush=True)
    report["machine"] = common.machine()
    path = common.write_results("swap", report)
    print(
        f"\n{'tree':6}{'round':>6}{'differ':>9}{'rss before':>12}{'peak after':>12}"
        f"{'swap MB':>9}{'swap s':>8}{'CPU s':>7}{'PG CPU s':>10}  load"
    )
    for r in report["runs"]:
        print(
            f"{r['tree']:6}{r['round']:>6}{r['change_rows']:>9}{r['rss_before_mb']:>12}"
            f"{r['peak_after_mb']:>12}{r['swap_rss_mb']:>9}{r['swap_seconds']:>8}"
            f"{r['swap_cpu_s']:>7}{r['postgres_cpu_s']:>10}  {r['load_avg']}"
        )
    print(f"written {path}")


if __name__ == "__main__":
    main()
