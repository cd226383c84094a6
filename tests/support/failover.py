"""Measuring failover: how long after a fault every partition folds again.

A partition "folds again" when its live checkpoint has moved past where it stood at the
fault, or when it has nothing left to fold (checkpoint at the log end). Under a steady load
every partition receives events, so the slowest partition is the one the dead process held:
its time is the failover.
"""

from __future__ import annotations

from entitled.settings import Settings
from entitled.topics import end_offsets
from launcher.services._process import run_async
from tests.support.db import query


def checkpoints(settings: Settings) -> dict[int, int]:
    """partition -> next offset of the live version ({} while unreadable)."""
    try:
        rows = query(
            settings,
            "SELECT partition, next_offset FROM live.checkpoints WHERE topic = %s",
            settings.topic,
        )
    except Exception:
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
