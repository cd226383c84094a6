"""Real Stripe payloads that public projects ship as test data (dj-stripe, stripe-ruby-mock,
pay, stripe-sync-engine and others, API versions 2016 to basil) through the real ingest and
worker. The corpus is fetched third-party data, not in this repository: it is read from where
`ENTITLED_STRIPE_CORPUS` points (default `../shared/stripe/corpus`, beside the checkout);
this test runs with `make corpus` (pytest `--public-corpus`), and fails when the corpus is
missing."""

from __future__ import annotations

import pytest

from entitled.settings import Settings
from tests.processors.corpus_events import CORPUS_ENV, corpus_dir, distinct_ids, public_corpus
from tests.processors.corpus_run import run_corpus
from tests.processors.test_corpus import ALLOWED_DEAD_LETTERS
from tests.support.processes import Procs


def test_public_corpus_folds_without_stalls_or_dead_letters(
    settings: Settings, procs: Procs
) -> None:
    directory = corpus_dir()
    if not (directory / "PROVENANCE.json").exists():
        pytest.fail(
            f"the public Stripe event corpus is not at {directory}: it is fetched third-party "
            f"data, not in this repository: point {CORPUS_ENV} at a copy",
            pytrace=False,
        )
    samples = distinct_ids(public_corpus(directory))
    assert len(samples) >= 150 and len({s.type for s in samples}) >= 80
    outcome = run_corpus(procs, settings, samples, ALLOWED_DEAD_LETTERS, ["cus_corpus_fresh"])
    assert outcome.posted > 0
    outcome.check()
