"""What a long-running process built to start, kept out of the garbage collector's way.

CPython's full collection (generation 2) walks every container object the process holds,
and the process does nothing else meanwhile. A worker holds ~55,000 of them once its modules
(Faust, aiokafka, psycopg) are imported and ~100,000 once running; a full collection took
40-56 ms of CPU (100-400 ms of wall on the loaded 2-core machine), every few seconds at 200
webhooks/s, and every webhook in flight waited for it: the worst tail of webhook -> visible
measured (issue 21; ingest, the relay and the hydrator ~20-30 ms each). Modules, classes and
functions live as long as the process: `freeze` moves what exists now to the permanent
generation, which collections skip. Objects frozen are still freed when their last reference
goes; only a reference cycle among them would outlive its use, and a process freezes once
it has started, not as it runs.
"""

from __future__ import annotations

import gc

__all__ = ["freeze"]


def freeze() -> None:
    """Collect what start-up left behind, then keep everything alive now out of every later
    collection (`gc.freeze`)."""
    gc.collect()
    gc.freeze()
