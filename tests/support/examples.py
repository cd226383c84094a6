"""How many examples a property test draws: all of them under `make test-long`
(HYPOTHESIS_PROFILE=long), a share of them in `make test`.

The share keeps every strategy and every assertion of the test; only the number of drawn
cases shrinks, so `make test` stays within its time budget while the long run still throws
its full 10,000+ cases at the code.
"""

from __future__ import annotations

import os

import pytest

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
SHARE = 0.1  # of the full count, in `make test`
FLOOR = 25  # never fewer examples than this


def examples(full: int) -> int:
    """`full` under the long profile, else a tenth of it (at least FLOOR, at most `full`)."""
    if LONG:
        return full
    return min(full, max(FLOOR, round(full * SHARE)))


def sized(short: float, full: float) -> float:
    """A load test's size: `full` under `make test-long`, else `short`: the same test with the
    same assertions over a shorter run, so `make test` stays within its budget."""
    return full if LONG else short


# A test that serves the API in its own process (a uvicorn thread, schemathesis' ASGI client)
# while hypothesis draws examples: psycopg_pool draws from the global `random` whenever it
# opens a connection (its lifetime jitter), and hypothesis, seeing the global random's state
# change during a draw, blames the strategy with a warning (an error here) that its replay
# does not repeat: a FlakyFailure. Such tests' strategies use no randomness of their own.
pool_jitter_is_not_the_strategy = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
