"""Benchmark replay (issue 6): rebuild the projections from a filled topic, end to end.

Side by side, in one run, on the same topic:
  * `read`   - aiokafka reads of the whole topic with the replay's reader (`read_log`), no
               parse (the ceiling of any replay);
  * `replay` - the real `entitled replay --yes` command in a child process, into a fresh
               database: events/s, the child's peak RSS (`os.wait4` rusage, i.e. the same
               figure as RUSAGE_CHILDREN for that one child), its CPU and Postgres's CPU;
  * `copy`   - a raw COPY of the replayed version's final rows (every table the replay
               wrote) into fresh tables of the same shape and indexes, timing only the load.
With `--profile`, also an in-process replay of the same topic into another fresh database
under cProfile, with wall-clock timers around each step of the writer (parse, fold, each
SQL step, commit), written to `bench/results/replay_profile.json` and `.txt`.
With `--against DIR`, the `replay` row also for another checkout (its own .venv and code: a
git worktree of main, say) on the same topic, into a fresh database of its own, the two
trees taking turns `--rounds` times (`replay_old` rows: CPU per event side by side).

    .venv/bin/python bench/replay.py [--events 1000000] [--profile] [--against DIR --rounds 2]

Uses KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL when set, else starts the local services in a
temp home. Prints figures and ratios; writes `bench/results/replay.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as `python bench/replay.py`, this folder comes first on sys.path: replace it by the repo.
_HERE = Path(__file__).parent.resolve()
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench import _common as common  # noqa: E402
from bench import _profile as profiling  # noqa: E402
from entitled.settings import Settings  # noqa: E402

# Issue 21: replay >= 0.5x the raw read of the same topic, peak RSS <= 300 MB.
GOALS = {"replay_to_read": 0.5, "peak_rss_mb": 300}
JOBS = 2  # `--jobs`: processes of the replay's bulk pass


# -- Postgres CPU ------------------------------------------------------------------------


# -- read and copy -----------------------------------------------------------------------


async def read_all(settings: Settings, ends: dict[int, int]) -> dict[str, Any]:
    from entitled.keyring import Keyring
    from processors.replay import read_log

    assert settings.kafka_bootstrap_servers
    n = size = 0
    async with Keyring(settings) as keyring:
        started = time.perf_counter()
        async for batch in read_log(settings, settings.topic, {}, ends, keyring=keyring):
            n += len(batch)
            size += sum(len(m.value) for m in batch)
        seconds = time.perf_counter() - started
    return {
        "events": n,
        "bytes": size,
        "seconds": round(seconds, 2),
        "events_per_s": round(n / seconds),
        "mb_per_s": round(size / seconds / 1e6, 1),
    }


def copy_rows(database_url: str, events: int) -> dict[str, Any]:
    """COPY every table of the newest version (the replay's, even unfinished) out, then
    time loading it into fresh tables of the same shape (same indexes) in one transaction."""
    import psycopg
    from psycopg import sql

    from projections import schema as db

    tables = (*db.MIRROR_TABLES, "customer_entitlements", "processed_events")
    with psycopg.connect(database_url, autocommit=True) as conn:
        (source,) = conn.execute(
            "SELECT schema_name FROM entitled.versions ORDER BY version DESC LIMIT 1"
        ).fetchone() or ("",)
        conn.execute("DROP SCHEMA IF EXISTS bench_copy CASCADE")
        conn.execute("CREATE SCHEMA bench_copy")
        data: dict[str, bytes] = {}
        rows: dict[str, int] = {}
        for t in tables:
            conn.execute(
                sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                    sql.Identifier("bench_copy", t), sql.Identifier(source, t)
                )
            )
            buf = io.BytesIO()
            with conn.cursor() as cur:
                with cur.copy(
                    sql.SQL("COPY (SELECT * FROM {}) TO STDOUT (FORMAT binary)").format(
                        sql.Identifier(source, t)
                    )
                ) as cp:
                    for chunk in cp:
                        buf.write(chunk)
                rows[t] = cur.rowcount
            data[t] = buf.getvalue()
        started = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            for t in tables:
                with cur.copy(
                    sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(
                        sql.Identifier("bench_copy", t)
                    )
                ) as cp:
                    view = memoryview(data[t])
                    for i in range(0, len(view), 1 << 20):
                        cp.write(view[i : i + (1 << 20)])
        seconds = time.perf_counter() - started
        conn.execute("DROP SCHEMA bench_copy CASCADE")
    return {
        "source_schema": source,
        "rows": rows,
        "total_rows": sum(rows.values()),
        "bytes": sum(len(d) for d in data.values()),
        "seconds": round(seconds, 2),
        "events_per_s_equivalent": round(events / seconds),
    }


def history_rows(database_url: str, events: int) -> dict[str, Any]:
    """The history rows the replayed version recorded, by the type of their event: a
    build recomputes each customer at each of their events and every subscriber at each
    regroup (`product.updated`), which grows with the square of the log, not with it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(database_url, autocommit=True) as conn:
        (source,) = conn.execute(
            "SELECT schema_name FROM entitled.versions ORDER BY version DESC LIMIT 1"
        ).fetchone() or ("",)
        rows = conn.execute(
            sql.SQL("SELECT coalesce(event_type, '(none)'), count(*) FROM {} GROUP BY 1").format(
                sql.Identifier(source, "history")
            )
        ).fetchall()
    by_type = {kind: n for kind, n in sorted(rows, key=lambda r: -r[1])}
    total = sum(by_type.values())
    return {
        "rows": total,
        "per_event": round(total / max(events, 1), 2),
        "regroup_share": round(by_type.get("product.updated", 0) / max(total, 1), 3),
        "by_event_type": by_type,
    }


# -- the replay command in a child process -----------------------------------------------

_SUMMARY = re.compile(r"v(\d+): (\d+) events in ([\d.]+)s")


_PROGRESS = re.compile(rb"replay:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")


def replay_child(
    settings: Settings,
    log_dir: Path,
    timeout: float,
    tree: Path | None = None,
    name: str = "replay",
) -> dict[str, Any]:
    """`entitled replay --yes` (of `tree`, else this checkout) in a child process; its
    rusage via os.wait4. Past `timeout` the child is stopped and the progress it had made
    (its tqdm bar) is reported instead."""
    assert settings.database_url
    asyncio.run(common.migrate(settings.database_url))
    pg = common.postmaster_pid(settings.database_url)
    pg_cpu = common.cpu_with_children(pg)
    log = log_dir / f"{name}.log"
    started = time.perf_counter()
    proc = common.spawn(settings, "replay", "--yes", "--jobs", str(JOBS), log=log, tree=tree)
    deadline = time.monotonic() + timeout
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            timed_out = True
            wall = time.perf_counter() - started
            os.killpg(proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if not timed_out:
        wall = time.perf_counter() - started
    pg_cpu = common.cpu_with_children(pg) - pg_cpu
    if timed_out:
        bars = _PROGRESS.findall(log.read_bytes())
        done = int(bars[-1][0]) if bars else 0
        return {
            "timed_out_after_s": timeout,
            "events": done,
            "of_events": int(bars[-1][1]) if bars else None,
            "wall_seconds": round(wall, 2),
            "events_per_s": round(done / wall),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "replay_cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "postgres_cpu_s": round(common.cpu_with_children(pg) - pg_cpu, 1),
            "log": str(log),
        }
    text = log.read_text(errors="replace")
    found = _SUMMARY.search(text)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"replay failed ({proc.returncode}):\n{text[-3000:]}")
    events, seconds = int(found.group(2)), float(found.group(3))
    return {
        "version": int(found.group(1)),
        "events": events,
        "build_seconds": seconds,
        "build_events_per_s": round(events / seconds),
        "wall_seconds": round(wall, 2),
        "events_per_s": round(events / wall),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
        "replay_cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "postgres_cpu_s": round(pg_cpu, 1),
        "cpu_ms_per_event": round((usage.ru_utime + usage.ru_stime + pg_cpu) / events * 1000, 3),
        "load_avg": common.machine()["load_avg"],
        "log": str(log),
    }


def side_by_side(
    base: Settings, log_dir: Path, timeout: float, against: Path, rounds: int
) -> dict[str, list[dict[str, Any]]]:
    """This checkout's replay and `against`'s, each into a fresh database (dropped after:
    autovacuum of one run's tables is not counted in the next one's Postgres CPU), taking
    turns, the first alternating by round."""
    runs: dict[str, list[dict[str, Any]]] = {"replay": [], "replay_old": []}
    for n in range(rounds):
        order = ["replay", "replay_old"] if n % 2 == 0 else ["replay_old", "replay"]
        for name in order:
            settings = common.fresh_database(base, name)
            tree = against if name == "replay_old" else None
            run = replay_child(settings, log_dir, timeout, tree, f"{name}_{n + 1}")
            print(f"{name} (round {n + 1}): {run}", flush=True)
            runs[name].append(run)
            common.drop_database(base, settings)
    return runs


# -- the profile of an in-process replay -------------------------------------------------


def profile_replay(settings: Settings, events: int, out_dir: Path) -> dict[str, Any]:
    """An in-process `replay()` under cProfile and the step timers."""
    from processors.replay import replay

    assert settings.database_url
    asyncio.run(common.migrate(settings.database_url))
    pg = common.postmaster_pid(settings.database_url)
    pg_cpu = common.cpu_with_children(pg)
    out = profiling.run(
        lambda: asyncio.run(replay(settings, progress=False)).events,
        out_dir / "replay_profile.txt",
    )
    out["postgres_cpu_s"] = round(common.cpu_with_children(pg) - pg_cpu, 2)
    return out


# -- main --------------------------------------------------------------------------------


def main() -> None:
    global JOBS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--profile", action="store_true", help="also profile in-process")
    parser.add_argument("--jobs", type=int, default=2, help="replay --jobs")
    parser.add_argument(
        "--replay-timeout", type=float, default=3600.0, help="stop the replay after this long"
    )
    parser.add_argument("--against", default=None, help="another checkout, side by side")
    parser.add_argument("--rounds", type=int, default=2, help="with --against: turns of each")
    args = parser.parse_args()
    JOBS = args.jobs

    report: dict[str, Any] = {"args": vars(args), "goals": GOALS}
    load: dict[str, Any] = {"start": common.machine()}
    log_dir = Path(tempfile.mkdtemp(prefix="entitled-bench-replay-logs-"))
    with common.bench_settings("replay") as base:
        print(f"filling {base.topic} with {args.events} events ...", flush=True)
        report["fill"] = common.fill_topic(base, args.events)
        print(f"fill: {report['fill']}", flush=True)
        ends = asyncio.run(common.end_offsets(base))

        print("read: reading the topic, no parse ...", flush=True)
        load["read"] = common.machine()["load_avg"]
        report["read"] = asyncio.run(read_all(base, ends))
        print(f"read: {report['read']}", flush=True)

        if args.against:
            print(f"replay: this checkout and {args.against}, side by side ...", flush=True)
            report["side_by_side"] = side_by_side(
                base, log_dir, args.replay_timeout, Path(args.against).resolve(), args.rounds
            )
            for name, runs in report["side_by_side"].items():
                cpu = sorted(r.get("cpu_ms_per_event", float("nan")) for r in runs)
                rss = [r["peak_rss_mb"] for r in runs]
                rate = [r["events_per_s"] for r in runs]
                ratio = [round(r / report["read"]["events_per_s"], 3) for r in rate]
                print(
                    f"{name:11} CPU ms/event {cpu}  peak RSS MB {rss}  ev/s {rate}"
                    f"  replay/read {ratio}"
                )
            common.write_results("replay_side_by_side", report)
            return

        print("replay: entitled replay --yes in a child process ...", flush=True)
        load["replay"] = common.machine()["load_avg"]
        replay_settings = common.fresh_database(base, "replay")
        report["replay"] = replay_child(replay_settings, log_dir, args.replay_timeout)
        print(f"replay: {report['replay']}", flush=True)

        print("copy: raw COPY of the replayed rows ...", flush=True)
        load["copy"] = common.machine()["load_avg"]
        assert replay_settings.database_url
        report["copy"] = copy_rows(replay_settings.database_url, report["replay"]["events"])
        print(f"copy: {report['copy']}", flush=True)
        report["history"] = history_rows(replay_settings.database_url, report["replay"]["events"])
        print(f"history: {report['history']}", flush=True)

        if args.profile:
            print("profile: in-process replay under cProfile ...", flush=True)
            load["profile"] = common.machine()["load_avg"]
            report["profile"] = profile_replay(
                common.fresh_database(base, "profile"), args.events, common.RESULTS
            )
            common.write_results("replay_profile", report["profile"])
            print(f"profile: {report['profile']['steps']}", flush=True)
    load["end"] = common.machine()
    report["machine"] = load

    r = report["replay"]
    ratios = {
        "replay_to_read": round(r["events_per_s"] / report["read"]["events_per_s"], 3),
        "replay_to_copy": round(r["events_per_s"] / report["copy"]["events_per_s_equivalent"], 3),
    }
    report["ratios"] = ratios
    report["met"] = {
        "replay_to_read >= 0.5": ratios["replay_to_read"] >= GOALS["replay_to_read"],
        "peak_rss_mb <= 300": r["peak_rss_mb"] <= GOALS["peak_rss_mb"],
    }
    path = common.write_results("replay", report)

    print(f"\n{'':8}{'events/s':>10}{'seconds':>9}")
    print(f"{'read':8}{report['read']['events_per_s']:>10}{report['read']['seconds']:>9}")
    print(f"{'replay':8}{r['events_per_s']:>10}{r['wall_seconds']:>9}")
    c = report["copy"]
    print(
        f"{'copy':8}{c['events_per_s_equivalent']:>10}{c['seconds']:>9}  ({c['total_rows']} rows)"
    )
    print(
        f"replay: peak RSS {r['peak_rss_mb']} MB, CPU {r['replay_cpu_s']} s,"
        f" Postgres CPU {r['postgres_cpu_s']} s, wall {r['wall_seconds']} s"
    )
    print(f"ratios: {ratios}")
    print(f"load avg: {load}")
    for goal, met in report["met"].items():
        print(f"  goal {goal}: {'MET' if met else 'NOT MET'}")
    print(f"written {path}")


if __name__ == "__main__":
    main()
