"""The Faust worker through real Kafka and Postgres: folding, crashes, dedup, poison."""

from __future__ import annotations

import itertools
import json
from typing import Any

from entitled.settings import Settings
from launcher.stripe import events as se
from tests.support.db import caught_up, entitlements, query
from tests.support.kafka import publish
from tests.support.polling import wait_until
from tests.support.processes import Procs


def _subscribed(
    sub_id: str, customer: str, item: tuple[str, str], created: int, **fields: Any
) -> dict[str, Any]:
    """`customer.subscription.created` of a one-item subscription (`fields`: status, legacy:
    the pre-2025 shape, sent with the API version of its time)."""
    api_version = se.LEGACY_API_VERSION if fields.get("legacy") else se.CURRENT_API_VERSION
    return se.event(
        "customer.subscription.created",
        se.subscription(sub_id, customer=customer, items=[item], **fields),
        created=created,
        api_version=api_version,
    )


def test_events_fold_into_entitlements_in_both_api_shapes(settings: Settings, procs: Procs) -> None:
    procs.spawn("worker")
    publish(
        settings,
        [
            se.event("product.created", se.product("prod_act", groups="action"), created=100),
            se.event(
                "product.created", se.product("prod_ani", groups="animated,family"), created=100
            ),
            se.event("product.created", se.product("prod_m7", movie_id="7"), created=100),
            # current shape
            _subscribed("sub_a", "cus_a", ("price_1", "prod_act"), 101),
            # pre-2025 shape
            _subscribed("sub_b", "cus_b", ("price_2", "prod_ani"), 101, legacy=True),
            se.event(
                "payment_intent.succeeded",
                se.payment_intent("pi_c", customer="cus_c", movie_id="42"),
                created=102,
            ),
            se.event(
                "invoice.paid",
                se.invoice("in_d", customer="cus_d", lines=[("price_m7", "prod_m7")]),
                created=103,
            ),
            _subscribed("sub_e", "cus_e", ("price_1", "prod_act"), 104, status="incomplete"),
        ],
    )
    want = {
        "cus_a": (["action"], []),
        "cus_b": (["animated", "family"], []),
        "cus_c": ([], ["42"]),
        "cus_d": ([], ["7"]),
        "cus_e": ([], []),
    }
    wait_until(lambda: entitlements(settings) == want, 60, f"entitlements {want}", procs)
    wait_until(lambda: caught_up(settings), 60, "the worker to reach the log end", procs)
    status = procs.spawn("status", "--json", name="status")
    assert status.popen is not None
    assert status.popen.wait(60) == 0, status.tail()
    info = json.loads(status.log.read_text())
    assert info["active"] == "entitled_v1" and info["lag"] == 0 and info["dead_letters"] == 0
    assert sum(p["end"] for p in info["partitions"]) == 8
    assert info["regroup_queue"] == 0 and info["regroup_queue_oldest_s"] == 0


def test_duplicates_and_out_of_order_change_nothing(settings: Settings, procs: Procs) -> None:
    sub = se.subscription("sub_x", customer="cus_x", items=[("price_1", "prod_act")])
    canceled = dict(sub, status="canceled")
    created = se.event("customer.subscription.created", sub, created=200)
    deleted = se.event("customer.subscription.deleted", canceled, created=210)
    product = se.event("product.created", se.product("prod_act", groups="action"), created=100)
    # the deletion arrives first, then the creation (late), and everything twice
    publish(settings, [deleted, product, created, deleted, created, product])
    procs.spawn("worker")
    wait_until(lambda: caught_up(settings), 60, "worker to reach the log end", procs)
    assert entitlements(settings) == {"cus_x": ([], [])}
    rows = query(settings, "SELECT record->>'status' FROM live.subscriptions WHERE id = 'sub_x'")
    assert rows == [("canceled",)]
    assert query(settings, "SELECT count(*) FROM entitled_v1.processed_events") == [(3,)]


def test_sigkilled_worker_ends_equal_to_a_fresh_fold(settings: Settings, procs: Procs) -> None:
    from launcher.services._process import run_async
    from launcher.workload import Workload
    from processors.replay import replay

    events = list(Workload(customers=600, seed=3).events())
    publish(settings, events)
    kills = 0
    for round_ in itertools.count():
        w = procs.spawn("worker", ENTITLED_BATCH_SIZE="50")
        if round_ >= 3:
            break
        # kill it in the middle of its work: after it committed some batches, before the end
        before = _applied(settings)
        wait_until(lambda b=before: _applied(settings) > b + 100, 90, "progress", procs)
        if caught_up(settings):
            break
        w.kill()
        kills += 1
    wait_until(lambda: caught_up(settings), 120, "worker to reach the log end", procs)
    assert kills >= 1
    distinct = len({e["id"] for e in events})
    # each event applied once: one dedup record per distinct event, none twice (primary key)
    assert _applied(settings) == distinct
    report = run_async(lambda: replay(settings, dry_run=True, progress=False))
    assert report.differences == []
    for table in ("subscriptions", "purchases", "products", "charges", "customers"):
        live = query(settings, f"SELECT id, record FROM live.{table} ORDER BY id")
        fresh = query(settings, f"SELECT id, record FROM {report.schema}.{table} ORDER BY id")
        assert live == fresh, table


def _applied(settings: Settings) -> int:
    try:
        return int(query(settings, "SELECT count(*) FROM entitled_v1.processed_events")[0][0])
    except Exception:
        return 0


def test_poison_event_parks_its_customer_only(settings: Settings, procs: Procs) -> None:
    good = se.subscription("sub_p", customer="cus_p", items=[("price_1", "prod_act")])
    # A well-formed event its rule raises on (tests.processors.poison_rules): malformed
    # fields are not poison any more, they take defined defaults.
    poison = se.event("customer.subscription.updated", good, id="evt_poison_1", created=301)
    later = se.event("customer.subscription.deleted", dict(good, status="canceled"), created=302)
    publish(
        settings,
        [
            se.event("product.created", se.product("prod_act", groups="action"), created=100),
            se.event("customer.subscription.created", good, created=300),
            poison,
            later,
            _subscribed("sub_q", "cus_q", ("price_1", "prod_act"), 303),
        ],
    )
    plugin = {"ENTITLED_RULE_PLUGINS": "tests.processors.poison_rules"}
    procs.spawn("worker", **plugin)
    wait_until(lambda: caught_up(settings), 60, "worker to reach the log end", procs)
    # cus_p stays as of its last good event; the deletion is parked behind the poison
    assert entitlements(settings) == {"cus_p": (["action"], []), "cus_q": (["action"], [])}
    letters = query(settings, "SELECT key, state, event_id FROM live.dead_letters ORDER BY id")
    assert letters == [("cus_p", "poison", poison["id"]), ("cus_p", "parked", later["id"])]
    listing = procs.spawn("deadletters", "list", "--json", name="list", **plugin)
    assert listing.popen is not None and listing.popen.wait(60) == 0, listing.tail()
    listed = json.loads(listing.log.read_text())
    assert [(d["state"], d["event_type"]) for d in listed] == [
        ("poison", "customer.subscription.updated"),
        ("parked", "customer.subscription.deleted"),
    ]
    assert "RuntimeError: the test's poison" in listed[0]["error"]
    # the operator gives up on the poison event: the parked deletion is applied
    skip = procs.spawn("deadletters", "skip", "cus_p", name="skip", **plugin)
    skip.popen.wait(60)  # type: ignore[union-attr]
    assert skip.popen.returncode == 0, skip.tail()  # type: ignore[union-attr]
    assert entitlements(settings) == {"cus_p": ([], []), "cus_q": (["action"], [])}


def test_a_gap_after_the_checkpoint_is_read_again_not_skipped(
    settings: Settings, procs: Procs
) -> None:
    """The consumer's position running ahead of the Postgres checkpoint (as Faust has been
    seen to do around a rebalance, faust-streaming/faust#216) makes the worker seek back."""
    events = [
        _subscribed(f"sub_g{i}", "cus_gap", ("price_1", "prod_act"), 500 + i) for i in range(5)
    ]
    placed = publish(settings, events)
    partition = placed[0][0]
    procs.spawn("worker")
    wait_until(lambda: caught_up(settings), 60, "the worker to reach the log end", procs)
    # Forget the last three events, as if they had been skipped: the checkpoint is behind
    # the consumer's position and their dedup records are gone.
    lost = [e["id"] for e in events[2:]]
    query(
        settings,
        "WITH d AS (DELETE FROM live.processed_events WHERE event_id = ANY(%s) RETURNING 1)"
        " UPDATE entitled_v1.checkpoints SET next_offset = next_offset - 3"
        " WHERE partition = %s RETURNING (SELECT count(*) FROM d)",
        lost,
        partition,
    )
    later = _subscribed("sub_g9", "cus_gap", ("price_1", "prod_act"), 600)
    publish(settings, [later])
    wait_until(lambda: caught_up(settings), 60, "the worker to read the gap again", procs)
    got = query(
        settings,
        "SELECT count(*) FROM live.processed_events WHERE event_id = ANY(%s)",
        [*lost, later["id"]],
    )
    assert got == [(4,)]
    assert any("seeking back" in p.tail(400) for p in procs.all)
