"""Real Stripe payloads through the real ingest and worker (issue 10, "a corpus of real
payloads"): every signed POST answered 200, every partition's checkpoint reaches the log
end, no dead letter unless named below with the reason its rule genuinely fails, and after
the corpus a normal subscription event still applies for every customer it touched."""

from __future__ import annotations

import time

from entitled.settings import Settings
from tests.processors.corpus_events import (
    distinct_ids,
    fixtures3_corpus,
    stripe_mock_corpus,
)
from tests.processors.corpus_run import run_corpus
from tests.support.processes import Procs
from tests.support.stripe_mock import API_KEY

# event id -> why its fold rule genuinely fails on it. Empty: no real payload may poison.
ALLOWED_DEAD_LETTERS: dict[str, str] = {}


def test_stripe_shapes_fold_without_stalls_or_dead_letters(
    settings: Settings, procs: Procs, stripe_mock: str
) -> None:
    """Stripe's example object of every type (fixtures3), a preview, a thin event, and
    stripe-mock's current-shape objects."""
    created = int(time.time()) - 3600
    samples = distinct_ids(
        [*fixtures3_corpus(created), *stripe_mock_corpus(stripe_mock, API_KEY, created)]
    )
    assert len({s.type for s in samples}) >= 70
    outcome = run_corpus(procs, settings, samples, ALLOWED_DEAD_LETTERS, ["cus_corpus_fresh"])
    outcome.check()
