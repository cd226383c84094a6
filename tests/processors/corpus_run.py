"""Post a corpus of events through a real ingest into a real worker and collect every way
the pipeline failed on it: refused posts, a worker that does not reach the log end,
dead letters nobody expected, and customers whose next normal event no longer applies.

The checks gather problems instead of stopping at the first, so that one run of a corpus
test reports everything it found (event ids, types, files, errors from the dead-letter
table and the worker's log).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from entitled.settings import Settings
from ingest.keys import routing_key
from launcher.stripe import events as se
from tests.processors.corpus_events import Sample
from tests.support.db import caught_up, progress, query
from tests.support.polling import wait_until
from tests.support.processes import Procs
from tests.support.system import start_system

CATCH_UP_S = 45.0
CHECK_GROUP = "corpus-check"


@dataclass
class Outcome:
    problems: list[str] = field(default_factory=list)
    posted: int = 0

    def check(self) -> None:
        assert not self.problems, "\n\n".join(self.problems)


def post_all(url: str, secret: str, samples: Iterable[Sample]) -> list[tuple[Sample, int, str]]:
    """POST each sample's exact bytes, signed as Stripe signs; the ones not answered 200."""
    refused = []
    with httpx.Client(timeout=30) as client:
        for s in samples:
            headers = {
                "Stripe-Signature": se.sign_header(s.body, secret),
                "Content-Type": "application/json",
            }
            r = client.post(f"{url}/webhooks/stripe", content=s.body, headers=headers)
            if r.status_code != 200:
                refused.append((s, r.status_code, r.text[:200]))
    return refused


def customers_of(samples: Iterable[Sample]) -> list[str]:
    """Customers the corpus touches (by the ingest's routing key), except deleted ones: a
    deleted customer rightly holds nothing afterwards."""
    touched: set[str] = set()
    deleted: set[str] = set()
    for s in samples:
        if not isinstance(s.event.get("data"), dict):
            continue
        key = routing_key(s.event)
        if key.startswith("cus_"):
            touched.add(key)
            if s.type == "customer.deleted":
                deleted.add(key)
    return sorted(touched - deleted)


def normal_events(customers: Sequence[str]) -> list[Mapping[str, Any]]:
    """A product granting `CHECK_GROUP` and one active subscription to it per customer,
    created now: newer than anything in a corpus."""
    now = int(time.time())
    product = se.product(groups=CHECK_GROUP, created=now)
    events: list[Mapping[str, Any]] = [se.event("product.created", product, created=now)]
    for customer in customers:
        sub = se.subscription(
            customer=customer, items=[(se.new_id("price"), product["id"])], created=now
        )
        events.append(se.event("customer.subscription.created", sub, created=now))
    return events


def granted(settings: Settings) -> dict[str, tuple[list[str], list[str]]]:
    """customer -> (groups, movie ids) from the live view."""
    rows = query(settings, "SELECT customer, groups, movie_ids FROM live.customer_entitlements")
    return {c: (list(g), list(m)) for c, g, m in rows}


def lag_report(settings: Settings) -> str:
    ends, cps = progress(settings)
    return ", ".join(f"p{p}: checkpoint {cps.get(p, 0)} / end {e}" for p, e in sorted(ends.items()))


def worker_errors(procs: Procs, lines: int = 25) -> str:
    out = []
    for p in procs.all:
        if p.args and p.args[0] == "worker":
            text = p.log.read_text(errors="replace").splitlines()
            hits = [ln for ln in text if "Error" in ln or "error" in ln or "Traceback" in ln]
            out.extend(hits[-lines:])
    return "\n".join(out)


def catch_up_report(procs: Procs, settings: Settings, timeout: float = CATCH_UP_S) -> str:
    """ "" when every partition's checkpoint reaches the log end in time, else what lags."""
    try:
        wait_until(lambda: caught_up(settings), timeout, "every partition's checkpoint")
    except AssertionError:
        return (
            f"the worker did not reach the log end within {timeout:.0f} s "
            f"({lag_report(settings)}); errors in its log:\n{worker_errors(procs)}"
        )
    return ""


def dead_letter_report(
    settings: Settings,
    allowed: Mapping[str, str],
    names: Mapping[str, str],
    unidentified: int = 0,
) -> str:
    """The dead letters whose event is not in `allowed`, one line each ("" when none).

    `unidentified`: how many posted samples have no event id (a public project's template
    with `"id": null`). A signed body is logged whatever it holds (issue 19, point 10), and
    the fold cannot deduplicate an event without an id: each is a dead letter saying so,
    which is the expected outcome; no more than that many such letters are passed over."""
    letters = query(
        settings,
        "SELECT event_id, event_type, state, key, error FROM live.dead_letters ORDER BY id",
    )
    lines = []
    for event_id, event_type, state, key, error in letters:
        if event_id in allowed:
            continue
        if event_id is None and unidentified and "no event id" in (error or ""):
            unidentified -= 1
            continue
        source = names.get(event_id, "(a normal event)")
        text = " ".join((error or "").split())  # errors may carry a caret diagram
        lines.append(f"  {state} {event_type} {event_id} key={key} [{source}]: {text[:400]}")
    return f"{len(lines)} dead letters:\n" + "\n".join(lines) if lines else ""


def run_corpus(
    procs: Procs,
    settings: Settings,
    samples: Sequence[Sample],
    allowed_dead_letters: Mapping[str, str],
    extra_customers: Sequence[str] = (),
) -> Outcome:
    """Start ingest and worker, post `samples` then one normal event per touched customer
    (and `extra_customers`), and return every problem seen."""
    outcome = Outcome()
    system = start_system(procs, api=False)
    url = system.ingest_url
    secret = settings.webhook_secrets[0]

    refused = post_all(url, secret, samples)
    outcome.posted = len(samples) - len(refused)
    if refused:
        outcome.problems.append(
            f"{len(refused)} of {len(samples)} posts not answered 200:\n"
            + "\n".join(f"  {s.name} ({s.type}, {s.id}): {st} {body}" for s, st, body in refused)
        )

    customers = [*customers_of(samples), *extra_customers]
    normal = normal_events(customers)
    for event in normal:
        body = se.encode(event)
        refused_normal = post_all(url, secret, [Sample("normal", dict(event), body)])
        if refused_normal:
            outcome.problems.append(f"a normal event was refused: {refused_normal[0][1:]}")

    stalled = catch_up_report(procs, settings)
    if stalled:
        outcome.problems.append(stalled)

    unidentified = sum(1 for s in samples if not s.event.get("id"))
    names = {s.id: s.name for s in samples}
    unexpected = dead_letter_report(settings, allowed_dead_letters, names, unidentified)
    if unexpected:
        outcome.problems.append(unexpected)

    now = granted(settings)
    missing = [c for c in customers if CHECK_GROUP not in now.get(c, ([], []))[0]]
    if missing:
        outcome.problems.append(
            f"{len(missing)} of {len(customers)} customers did not get the group of their "
            f"subscription created after the corpus: {missing}"
        )
    return outcome
