"""Measuring failover: how long after a fault every partition folds again.

A partition "folds again" when its live checkpoint has moved past where it stood at the
fault, or when it has nothing left to fold (checkpoint at the log end). Under a steady load
every partition receives events, so the slowest partition is the one the dead process held:
its time is the failover.

For a worker's death, "where it stood at the fault" is read once the survivors hold every
partition (`worker_failover`): read at the signal, or even once the process was reaped, the
dead copy's last commit (sent before it died, landing after the read) passed for a failover
(0.03-0.2 s figures, while its partitions resumed on the survivor 1-2 s later).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg

from entitled.settings import Settings
from entitled.topics import end_offsets
from launcher.services._process import run_async
from tests.support.polling import seconds_until

# One connection per database, kept between polls: a new connection per poll (a Postgres
# backend forked, authenticated) added its cost to every failover it measured. Reopened
# after a failure (a restart).
_kept: dict[str, psycopg.Connection[Any]] = {}


def checkpoints(settings: Settings) -> dict[int, int]:
    """partition -> next offset of the live version ({} while unreadable)."""
    assert settings.database_url
    url = settings.database_url
    try:
        conn = _kept.get(url)
        if conn is None or conn.closed:
            conn = _kept[url] = psycopg.connect(url, autocommit=True, connect_timeout=5)
        rows = conn.execute(
            "SELECT partition, next_offset FROM live.checkpoints WHERE topic = %s",
            (settings.topic,),
        ).fetchall()
    except Exception:
        dropped = _kept.pop(url, None)
        if dropped is not None:
            dropped.close()
        return {}
    return {int(p): int(o) for p, o in rows}


def folding_again(settings: Settings, before: dict[int, int]) -> bool:
    """Every partition moved past `before` or has reached the log end."""
    now = checkpoints(settings)
    if not now:
        return False
    stuck = [p for p in range(settings.partitions) if now.get(p, 0) <= before.get(p, 0)]
    if not stuck:  # the usual answer under load, without asking Kafka (a slow probe
        return True  # would add its own time to the failover it measures)
    try:
        ends = run_async(lambda: end_offsets(settings))
    except Exception:
        return False
    return all(now.get(p, 0) >= ends.get(p, 0) for p in stuck)


def worker_failover(
    settings: Settings, held: Callable[[], float | None], start: float, timeout: float = 90
) -> float | None:
    """Seconds from `start` (the signal) until the surviving workers hold every partition
    (`held()`: their `entitled_worker_partitions`, summed) and every partition has folded
    past its checkpoint of that moment; None if not within `timeout`."""
    if seconds_until(lambda: held() == settings.partitions, timeout, step=0.02) is None:
        return None
    before = checkpoints(settings)
    left = max(0.1, start + timeout - time.monotonic())
    if seconds_until(lambda: folding_again(settings, before), left) is None:
        return None
    return round(time.monotonic() - start, 2)
