"""Forgetting a customer (issue 20), through real Kafka, Postgres and `entitled` processes.

A customer with a subscription, a Checkout purchase, a payment intent created before the
customer was attached, a refund and a dead letter is forgotten through the API. Then none of
their events opens, no row, change row or dead letter of any version mentions them, the API
answers 404, after forced compaction (a keys topic with tiny segments) no key of theirs is
left on the broker (`entitled forget --verify` exits 0), and a fresh replay equals live, with
the other customer untouched. A wrong master key stops a worker at start, loudly.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import httpx

from entitled.crypto import new_master_key
from entitled.keyring import Keyring
from entitled.settings import Settings
from launcher.services._process import run_async
from launcher.stripe import events as se
from launcher.stripe import payments as sp
from tests.support.db import active_schema, caught_up, entitlements, query
from tests.support.kafka import publish, read_topic
from tests.support.polling import wait_until
from tests.support.processes import Procs
from tests.support.system import System, start_system

POISON = {"ENTITLED_RULE_PLUGINS": "tests.processors.poison_rules"}
GONE, KEPT = "cus_forgetme", "cus_keepme"
MIRRORED = ("customers", "subscriptions", "purchases", "charges", "refunds")


def _events(cus: str, n: int) -> list[dict[str, Any]]:
    """A customer's history: subscription, a payment intent made before the customer was
    attached (keyed by its own id until then), a Checkout purchase, its charge and a partial
    refund (keyed by the refund's id: Stripe names no customer on it)."""
    person = se.customer(cus, email=f"{cus}@example.com", name="Jenny Rosen", created=100)
    sub = se.subscription(f"sub_{cus}", customer=cus, items=[("price_act", "prod_act")])
    early = sp.payment_intent(f"pi_{cus}_early", customer=cus, movie_id="1", status="processing")
    early["customer"] = None
    attached = sp.payment_intent(f"pi_{cus}_early", customer=cus, movie_id="1")
    session = sp.checkout_session(
        f"cs_{cus}", customer=cus, movie_id="2", payment_intent=f"pi_{cus}_cs", created=110
    )
    charge = sp.charge(f"ch_{cus}", customer=cus, payment_intent=f"pi_{cus}_cs", created=111)
    refund = sp.refund(
        f"re_{cus}", charge=f"ch_{cus}", payment_intent=f"pi_{cus}_cs", amount=100, created=112
    )
    return [
        se.event("customer.created", person, created=100 + n),
        se.event("customer.subscription.created", sub, created=101 + n),
        se.event("payment_intent.processing", early, created=102 + n),
        se.event("payment_intent.succeeded", attached, created=103 + n),
        se.event("checkout.session.completed", session, created=110 + n),
        se.event("charge.succeeded", charge, created=111 + n),
        se.event("refund.created", refund, created=112 + n),
    ]


def _poison(cus: str) -> dict[str, Any]:
    sub = se.subscription(f"sub_{cus}", customer=cus, items=[("price_act", "prod_act")])
    event = se.event("customer.subscription.updated", sub, created=200)
    event["id"] = f"evt_poison_{cus}"  # what the plugin's rule raises on: a dead letter
    return event


def _post(system: System, events: list[dict[str, Any]]) -> None:
    for event in events:
        response = system.post_event(event)
        assert response.status_code == 200, response.text


def _rows(settings: Settings, schema: str) -> dict[str, list[Any]]:
    return {
        t: query(settings, f"SELECT id, customer, record FROM {schema}.{t} ORDER BY id")
        for t in MIRRORED
    }


def _of(customer: str, rows: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {t: [r for r in found if customer in str(r)] for t, found in rows.items()}


def _mentions(settings: Settings, customer: str) -> list[str]:
    """Every place in any version (and the change feed) that names `customer`."""
    found = []
    for (schema,) in query(settings, "SELECT schema_name FROM entitled.versions"):
        for table in (*MIRRORED, "customer_entitlements", "history"):
            text = "record::text" if table in MIRRORED else "customer"
            n = query(
                settings,
                f"SELECT count(*) FROM {schema}.{table} WHERE {text} LIKE %s",
                f"%{customer}%",
            )[0][0]
            if n:
                found.append(f"{schema}.{table}: {n}")
        n = query(
            settings,
            f"SELECT count(*) FROM {schema}.dead_letters"
            " WHERE key LIKE %s OR position(%s IN raw) > 0",
            f"%{customer}%",
            customer.encode(),
        )[0][0]
        if n:
            found.append(f"{schema}.dead_letters: {n}")
    n = query(
        settings,
        "SELECT count(*) FROM entitled.changes WHERE customer = %s AND cause <> 'forget'",
        customer,
    )[0][0]
    if n:
        found.append(f"entitled.changes: {n}")
    return found


def _roll_keys(settings: Settings, n: int) -> None:
    """Write one more key: a segment rolls only when something is appended after
    `segment.ms`, and only a rolled segment is compacted."""

    async def go() -> None:
        async with Keyring(settings) as keyring:
            await keyring.seal(f"cus_roll_{n}", b"{}")

    run_async(go)


def test_a_forgotten_customer_is_gone_everywhere(settings: Settings, procs: Procs) -> None:
    # The keys topic made first, with tiny segments: compaction can be forced in the test.
    async def make_keys_topic() -> None:
        async with Keyring(replace(settings, keys_segment_s=0.5)):
            pass

    run_async(make_keys_topic)
    procs.run("migrate")
    product = se.product("prod_act", groups="action", created=50)
    publish(settings, [se.event("product.created", product, created=50)])
    system = start_system(procs, catalog=False, **POISON)
    _post(system, [*_events(GONE, 0), *_events(KEPT, 1000), _poison(GONE)])
    wait_until(lambda: caught_up(settings), 120, "the worker caught up", procs)
    held = wait_until(
        lambda: (e := entitlements(settings)).get(GONE) and e.get(KEPT) and e,
        60,
        "both customers entitled",
        procs,
    )
    assert held[GONE] == (["action"], ["1", "2"]), held
    live = active_schema(settings)
    assert query(settings, f"SELECT count(*) FROM {live}.dead_letters WHERE key = %s", GONE)[0][0]
    kept_rows = {
        t: [r for r in rows if KEPT in str(r)] for t, rows in _rows(settings, live).items()
    }

    response = httpx.delete(
        f"{system.api_url}/v1/customers/{GONE}",
        headers={"X-Requested-By": "test admin", "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    subjects = set(body["subjects"])
    # linked through the projection: the early payment intent, the session's, the refund
    assert {GONE, f"pi_{GONE}_early", f"pi_{GONE}_cs", f"re_{GONE}", f"cs_{GONE}"} <= subjects
    assert not any(KEPT in s for s in subjects)
    assert body["keys"] >= 3  # the customer's, the early payment intent's, the refund's

    # none of their events opens any more; the other customer's do
    records = run_async(lambda: read_topic(settings))
    theirs = [r for r in records if r.key is not None and r.key.decode() in subjects]
    assert len(theirs) >= 8
    assert all(r.value == b"" for r in theirs)  # opened as forgotten: nothing to read
    assert not any(GONE.encode() in r.value for r in records)
    assert any(KEPT.encode() in r.value for r in records)

    # the API answers 404; nothing in any version names them; one `forget` change
    entitled_url = f"{system.api_url}/v1/customers/{GONE}/entitlements"
    assert httpx.get(entitled_url).status_code == 404
    assert _mentions(settings, GONE) == []
    (change,) = query(
        settings,
        "SELECT cause, groups_before, groups_after, movies_after FROM entitled.changes"
        " WHERE customer = %s",
        GONE,
    )
    assert change == ("forget", ["action"], [], [])
    (record,) = query(
        settings, "SELECT requested_by FROM entitled.erasures WHERE customer = %s", GONE
    )
    assert record == ("test admin",)

    # the keys stay on the broker until compaction: `forget --verify` says so, exit 1 ...
    early = system.run("forget", "--verify", GONE)
    assert early.returncode == 1, early.stdout + early.stderr
    assert f"{settings.keys_topic}: {GONE}/" in early.stdout
    assert "readable events naming them: none" in early.stdout
    # ... and exit 0 once compaction removed them
    rolls = iter(range(1000))

    def verified() -> bool:
        _roll_keys(settings, next(rolls))
        return system.run("forget", "--verify", GONE).returncode == 0

    wait_until(verified, 120, "compaction removed the forgotten keys", procs)
    report = system.run("forget", "--verify", GONE)
    assert "nothing left" in report.stdout, report.stdout + report.stderr

    # a fresh replay equals live; the other customer is untouched
    before = _rows(settings, live)
    assert _of(KEPT, before) == kept_rows
    procs.run("replay", "--yes", "--jobs", "1", name="replay", timeout=180, **POISON)
    rebuilt = active_schema(settings)
    assert rebuilt != live
    assert _rows(settings, rebuilt) == before
    assert entitlements(settings) == {k: v for k, v in held.items() if k != GONE}
    assert _mentions(settings, GONE) == []

    # a later event about them (created after the forget) starts a new key and folds as
    # any first event
    now = int(time.time()) + 1
    _post(system, [se.event("customer.created", se.customer(GONE, created=now), created=now)])
    wait_until(
        lambda: query(settings, "SELECT count(*) FROM live.customers WHERE id = %s", GONE)[0][0],
        60,
        "the returning customer folded",
        procs,
    )


def test_a_wrong_master_key_stops_the_worker_loudly(settings: Settings, procs: Procs) -> None:
    publish(settings, [se.event("customer.created", se.customer("cus_x"), created=1)])
    procs.run("migrate")
    worker = procs.spawn("worker", ENTITLED_MASTER_KEY=new_master_key())
    started = time.monotonic()
    assert worker.wait(90) != 0
    assert "wrong master key" in worker.tail(), worker.tail()
    assert time.monotonic() - started < 90
    # nothing was folded as forgotten meanwhile: the checkpoint never moved
    assert query(settings, "SELECT count(*) FROM live.checkpoints")[0][0] == 0
    ingest = procs.spawn("ingest", "--port", "0", ENTITLED_MASTER_KEY="")
    assert ingest.wait(60) != 0
    assert "ENTITLED_MASTER_KEY is not set" in ingest.tail(), ingest.tail()
