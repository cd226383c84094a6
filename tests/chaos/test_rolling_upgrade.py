"""A rolling upgrade under load, as a merchant deploys: webhooks and searches flow all along
while the new release's `entitled migrate` adds a projection column beside the old worker,
a new-release worker starts beside it, the old one is stopped with SIGTERM, and the new
release's replay swaps in (its changed rule needs one: docs/operations.md, Rolling
upgrades). The release is tests/processors/release_rules.py (a rule plugin): the column
`products.name_key` and upper-cased product names.

Checked: every webhook answered 200, no search failed or answered 5xx, the old worker
exited 0 within 10 s of SIGTERM, the column exists in the live version from the migration
on and holds the right value on every row (those the old worker wrote too), the swap gate
let the replay's build in (no customer lost anything), and at the end live equals a fresh
replay in everything (nothing lost or doubled, the same entitlements and mirrored rows) but
the product names, which are exactly the new rule's, for the products created before the
upgrade too.
"""

from __future__ import annotations

import itertools
import os
import signal

import pytest

from entitled.settings import Settings
from ingest.keys import routing_key
from launcher.workload import Workload
from tests.support.audit import audit
from tests.support.db import caught_up, query
from tests.support.load import Poster, SearchLoop
from tests.support.polling import wait_until
from tests.support.processes import Procs
from tests.support.system import start_system

SECRET = "whsec_test_secret"
PLUGIN = "tests.processors.release_rules"  # never imported here: it overrides a rule
NAME_KEY = "name_key"  # the release's new column


def _wrong_keys(settings: Settings) -> int:
    """Live products whose new column is not what the release computes."""
    rows = query(
        settings,
        f"SELECT count(*) FROM live.products"
        f" WHERE {NAME_KEY} IS DISTINCT FROM lower(record->>'name')",
    )
    return int(rows[0][0])


@pytest.mark.timeout(300)
def test_rolling_upgrade_under_load(settings: Settings, procs: Procs) -> None:
    rate = 20.0
    events = list(itertools.islice(Workload(customers=300).events(), int(rate * 30)))
    customers = sorted({routing_key(e) for e in events if routing_key(e).startswith("cus_")})
    system = start_system(procs, workers=1, ENTITLED_BATCH_SIZE="100")
    (old,) = system.workers
    # retried as long as it takes on a loaded machine (Stripe retries for days)
    poster = Poster(system.ingest_urls, events, SECRET, rate, overall_s=600).start()
    searches = SearchLoop(system.api_url, customers[:100], rate=10).start()
    wait_until(lambda: poster.settled > 60, 60, "load flowing", procs)

    # 1. the release's migration adds the column while the old worker folds
    procs.run("migrate", name="migrate-release", ENTITLED_RULE_PLUGINS=PLUGIN)
    assert _wrong_keys(settings) == 0
    # 2. a new-release worker beside the old one
    new = system.add_worker_with(ENTITLED_RULE_PLUGINS=PLUGIN)
    wait_until(
        lambda: "resumed" in new.log.read_text(errors="replace"),
        60,
        "the new worker to take partitions",
        procs,
    )
    # 3. the old one stopped as a deploy stops it
    assert old.popen is not None
    os.killpg(old.popen.pid, signal.SIGTERM)
    assert old.wait(10) == 0, old.tail()
    # 4. the changed rule: a replay with the swap gate (not forced), under load
    procs.run("replay", "--yes", name="replay-release", ENTITLED_RULE_PLUGINS=PLUGIN)

    poster.join(timeout=300)
    wait_until(lambda: caught_up(settings), 120, "the new worker to reach the log end", procs)
    searches.stop()
    failed = [(t, s) for t, s in searches.answers if s >= 500 or s < 0]
    assert not failed, f"searches failed during the upgrade: {failed[:10]}"
    assert not poster.rejected and not poster.gave_up, (poster.rejected[:3], poster.gave_up[:3])
    assert _wrong_keys(settings) == 0
    # The fresh replay of `audit` runs the shipped rules in this process: it must equal live
    # in everything but the one thing the release's rule changed, the product names.
    result = audit(settings, poster.acked)
    assert [t.split()[0] for t in result.tables_unequal] == ["products"], result.figures()
    assert [p for p in result.problems if "mirrored tables" not in p] == [], result.problems
    live = dict(query(settings, "SELECT id, record->>'name' FROM live.products"))
    fresh = dict(
        query(settings, f"SELECT id, record->>'name' FROM {result.replay_schema}.products")
    )
    assert live and live == {k: v.upper() if v else v for k, v in fresh.items()}
