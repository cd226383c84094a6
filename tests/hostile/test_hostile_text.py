"""Hostile text end to end (issue 10, "values cleaned, not serialised text"): text a customer
or merchant can type, in every free-text field and metadata of every object type the fold
reads, through the real ingest and worker. Afterwards no partition stalls, nothing is
dead-lettered, each hostile customer's own events applied (their subscription's group and
their checkout's movie), a normal event for each of them still applies, and customers on
every partition who never saw hostile text keep folding."""

from __future__ import annotations

import time

from entitled.settings import Settings
from launcher.stripe import events as se
from tests.hostile.hostile_text import (
    KINDS,
    Kind,
    customer_id,
    encode,
    events,
    group,
    movie,
    product_id,
)
from tests.processors.corpus_events import Sample
from tests.processors.corpus_run import (
    catch_up_report,
    dead_letter_report,
    granted,
    post_all,
)
from tests.support.db import query
from tests.support.processes import Procs
from tests.support.system import start_system

NORMAL_GROUP = "normal"
BYSTANDERS = 16  # two per partition on average: every partition has normal traffic too


def test_hostile_text_in_every_field_stalls_nothing_and_parks_nobody(
    settings: Settings, procs: Procs
) -> None:
    url = start_system(procs, api=False).ingest_url
    secret = settings.webhook_secrets[0]
    created = int(time.time()) - 600
    kinds_of: dict[str, Kind] = {}
    samples = []
    for n, kind in enumerate(KINDS):
        for e in events(kind, created + 20 * n):
            samples.append(Sample(f"{kind.name}:{e['type']}", e, encode(e)))
            kinds_of[e["id"]] = kind
    names = {s.id: s.name for s in samples}
    problems = []

    refused = post_all(url, secret, samples)
    unexpected = [r for r in refused if not (kinds_of[r[0].id].may_be_refused and r[1] == 400)]
    if unexpected:
        problems.append(
            f"{len(unexpected)} hostile posts not answered 200:\n"
            + "\n".join(f"  {s.name} {s.id}: {st} {body}" for s, st, body in unexpected)
        )
    refused_kinds = {kinds_of[s.id].name for s, _, _ in refused}

    # then normal traffic: the hostile customers and bystanders on every partition
    now = int(time.time())
    product = se.product(groups=NORMAL_GROUP, created=now)
    normal = [se.event("product.created", product, created=now)]
    hostile_customers = [customer_id(k) for k in KINDS]
    bystanders = [f"cus_bystander_{n}" for n in range(BYSTANDERS)]
    for customer in [*hostile_customers, *bystanders]:
        sub = se.subscription(customer=customer, items=[("price_normal", product["id"])])
        normal.append(se.event("customer.subscription.created", sub, created=now))
    normal_refused = post_all(url, secret, [Sample("normal", e, se.encode(e)) for e in normal])
    if normal_refused:
        problems.append(f"normal events refused: {[(s.id, st) for s, st, _ in normal_refused]}")

    stalled = catch_up_report(procs, settings)
    if stalled:
        problems.append(stalled)
    letters = dead_letter_report(settings, {}, names)
    if letters:
        problems.append(letters)

    now_granted = granted(settings)
    for kind in KINDS:
        groups, movies = now_granted.get(customer_id(kind), ([], []))
        want_groups = {NORMAL_GROUP}
        want_movies = set()
        if kind.name not in refused_kinds:
            want_groups.add(group(kind))
            want_movies.add(movie(kind))
        if not (want_groups <= set(groups) and want_movies <= set(movies)):
            problems.append(
                f"{customer_id(kind)} ({kind.name}) holds groups {groups} movies {movies}; "
                f"expected at least {sorted(want_groups)} and {sorted(want_movies)}"
            )
    # text is stored as typed, U+0000 removed (Postgres text cannot hold it) and nothing else:
    # the six characters \u0000 and every escape-looking sequence stay as they are
    for kind in KINDS:
        if kind.may_be_refused:
            continue
        want = kind.text.replace("\x00", "")
        for table, row_id in (("customers", customer_id(kind)), ("products", product_id(kind))):
            rows = query(
                settings, f"SELECT record->>'name' FROM live.{table} WHERE id = %s", row_id
            )
            if rows != [(want,)]:
                shown = [r[0][:80] if r[0] else r[0] for r in rows]
                problems.append(
                    f"{table} {row_id} ({kind.name}) name is {shown!r}, not {want[:80]!r}"
                )
    left_out = [c for c in bystanders if NORMAL_GROUP not in now_granted.get(c, ([], []))[0]]
    if left_out:
        problems.append(f"bystanders that did not fold: {left_out}")
    assert not problems, "\n\n".join(problems)
