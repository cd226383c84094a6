"""Where the writer's time goes: cProfile plus inclusive wall-clock timers around each step.

`run(fn, text_path)` calls `fn` (which returns the number of events it folded) with every
step of the writer wrapped in a timer (`ProjectionStore.apply` and its load, plan and write,
each SQL step, parse, fold, derive), under cProfile; it returns the steps and the functions
with the most own time, and writes the pstats listing to `text_path`. Used by
`bench/fold.py --profile` (the in-process writer) and `bench/replay.py --profile`. The
profiler roughly doubles Python time: read the steps as shares, not as rates.
"""

from __future__ import annotations

import contextlib
import cProfile
import functools
import io
import pstats
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["run"]


class _Timers:
    """Inclusive wall-clock seconds and calls per wrapped function."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap_sync(self, owner: Any, name: str, label: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t
                self.calls[label] += 1

        setattr(owner, name, timed)

    def wrap_async(self, owner: Any, name: str, label: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t
                self.calls[label] += 1

        setattr(owner, name, timed)


@contextlib.contextmanager
def _instrumented(timers: _Timers) -> Iterator[None]:
    """Wrap the writer's steps in timers for the duration (restored after).

    The steps are module functions of the writer's modules and methods of `ProjectionStore`;
    a function another module imported by name (`recompute.load_many`, `recompute.derive`)
    is wrapped there too."""
    from projections import changes, deadletters, offsets, recompute, upserts
    from projections.model import plan
    from projections.store import ProjectionStore

    plain = [
        (plan, "parse", "parse (events.parse)"),
        (plan, "fold_batch", "fold (fold_batch)"),
        (recompute, "derive", "derive (entitlement rules, python)"),
    ]
    rows = "          load_many: SELECT record + from_record (all callers)"
    steps = [
        (ProjectionStore, "apply", "apply: whole transaction incl. BEGIN/COMMIT"),
        (offsets, "lock", "    checkpoints read (FOR UPDATE)"),
        (deadletters, "held", "    dead-letter keys lookup"),
        (ProjectionStore, "_plan", "    load + plan"),
        (upserts, "seen", "      processed_events lookup (dedup)"),
        (upserts, "load_targets", "      load current rows of targets"),
        (ProjectionStore, "_write", "    write"),
        (deadletters, "record", "      dead letters insert"),
        (upserts, "write_rows", "      upsert mirrored rows (COPY + INSERT..ON CONFLICT)"),
        (upserts, "mark_processed", "      processed_events COPY"),
        (recompute, "recompute", "      recompute entitlements (total)"),
        (recompute, "_reached", "        customers reached through links"),
        (recompute, "derive_many", "        derive_many (SELECTs + derive)"),
        (upserts, "load_many", rows),
        (recompute, "load_many", rows),
        (recompute, "write_entitlements", "        entitlements upsert"),
        (changes, "record", "        change rows insert"),
        (offsets, "save", "    checkpoints upsert"),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in plain + steps]
    for owner, name, label in plain:
        timers.wrap_sync(owner, name, label)
    for owner, name, label in steps:
        timers.wrap_async(owner, name, label)
    try:
        yield
    finally:
        for owner, name, fn in reversed(saved):
            setattr(owner, name, fn)


def run(fn: Callable[[], int], text_path: Path) -> dict[str, Any]:
    """Call `fn` (it returns the events it folded) instrumented and profiled."""
    timers = _Timers()
    profiler = cProfile.Profile()
    cpu = time.process_time()
    started = time.perf_counter()
    with _instrumented(timers):
        profiler.enable()
        events = fn()
        profiler.disable()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu

    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(35)
    stats.sort_stats("cumulative").print_stats(45)
    text_path.write_text(text.getvalue())
    top = sorted(
        (
            (v[2], v[3], v[1], f"{Path(k[0]).name}:{k[1]}({k[2]})")
            for k, v in stats.stats.items()  # type: ignore[attr-defined]
        ),
        reverse=True,
    )[:25]
    return {
        "events": events,
        "wall_seconds": round(wall, 2),
        "events_per_s_under_profiler": round(events / wall),
        "process_cpu_s": round(cpu, 2),
        "note": "timers are inclusive wall seconds (nested labels are part of their parent);"
        " the profiler roughly doubles Python CPU time",
        "steps": {
            k: {"seconds": round(v, 2), "calls": timers.calls[k]}
            for k, v in sorted(timers.seconds.items(), key=lambda kv: -kv[1])
        },
        "top_tottime": [
            {"function": f, "tottime_s": round(tt, 2), "cumtime_s": round(ct, 2), "calls": n}
            for tt, ct, n, f in top
        ],
    }
