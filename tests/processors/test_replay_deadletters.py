"""Replay honours the dead letters (issue 10, point 7), through real Kafka, Postgres and
`entitled` processes: an event the operator skipped stays skipped and a parked customer
stays parked, in a one-customer rebuild (`replay --customer`) and in a full replay alike,
and both give the same rows.

The poison comes from a rule that raises (`poison_rules`, a rule plugin loaded by the worker
and every replay), as a genuinely failing rule would.
"""

from __future__ import annotations

from typing import Any

from entitled.settings import Settings
from launcher.stripe import events as se
from tests.support.db import caught_up, entitlements, query
from tests.support.kafka import publish
from tests.support.polling import wait_until
from tests.support.processes import Procs

POISON = {"ENTITLED_RULE_PLUGINS": "tests.processors.poison_rules"}
MIRRORED = ("products", "prices", "customers", "subscriptions", "purchases", "charges", "refunds")


def _subscription(cus: str, sub: str, at: int, kind: str = "created", **obj: Any) -> Any:
    s = se.subscription(sub, customer=cus, items=[("price_act", "prod_act")])
    s.update(obj)
    return se.event(f"customer.subscription.{kind}", s, created=at)


def _poison(cus: str, sub: str, at: int) -> Any:
    event = _subscription(cus, sub, at, "updated")
    event["id"] = f"evt_poison_{cus}"  # what the plugin's rule raises on
    return event


def _buy(cus: str, movie: str, at: int) -> Any:
    pi = se.payment_intent(f"pi_{cus}_{movie}", customer=cus, movie_id=movie)
    return se.event("payment_intent.succeeded", pi, created=at)


def _run(procs: Procs, *args: str) -> str:
    p = procs.spawn(*args, name=args[0], **POISON)
    assert p.popen is not None
    p.popen.wait(180)
    assert p.popen.returncode == 0, p.tail()
    return p.tail(100)


def _rows_of(settings: Settings, schema: str, customer: str) -> dict[str, list[Any]]:
    return {
        t: query(
            settings,
            f"SELECT id, record, event_id FROM {schema}.{t} WHERE customer = %s ORDER BY id",
            customer,
        )
        for t in MIRRORED
    }


def _letters(settings: Settings, schema: str, customer: str) -> list[tuple[str, str]]:
    return [
        (event_id, state)
        for event_id, state in query(
            settings,
            f"SELECT event_id, state FROM {schema}.dead_letters WHERE key = %s"
            ' ORDER BY partition, "offset"',
            customer,
        )
    ]


def test_replay_keeps_skipped_events_skipped_and_parked_customers_parked(
    settings: Settings, procs: Procs
) -> None:
    skipped = _poison("cus_s", "sub_s", 101)
    parked = _poison("cus_k", "sub_k", 201)
    publish(
        settings,
        [
            se.event("product.created", se.product("prod_act", groups="action"), created=10),
            _subscription("cus_s", "sub_s", 100),
            skipped,
            _subscription("cus_s", "sub_s", 102, "deleted", status="canceled"),
            _buy("cus_s", "m7", 103),
            _subscription("cus_k", "sub_k", 200),
            parked,
            _subscription("cus_k", "sub_k", 202, "deleted", status="canceled"),
            _subscription("cus_o", "sub_o", 300),
        ],
    )
    procs.spawn("worker", **POISON)
    wait_until(lambda: caught_up(settings), 90, "the worker to fold the log", procs)
    everyone = {"cus_s": (["action"], []), "cus_k": (["action"], []), "cus_o": (["action"], [])}
    assert entitlements(settings) == everyone  # cus_s and cus_k parked behind their poison

    # the operator gives up on cus_s's poison: its parked events apply, later ones too
    _run(procs, "deadletters", "skip", "cus_s")
    publish(settings, [_buy("cus_s", "m8", 104), _subscription("cus_k", "sub_k2", 203)])
    wait_until(lambda: caught_up(settings), 60, "the worker to fold the new events", procs)
    everyone["cus_s"] = ([], ["m7", "m8"])
    assert entitlements(settings) == everyone
    letters_s = _letters(settings, "entitled_v1", "cus_s")
    assert [s for _e, s in letters_s] == ["skipped", "applied", "applied"]
    letters_k = _letters(settings, "entitled_v1", "cus_k")
    assert [s for _e, s in letters_k] == ["poison", "parked", "parked"]
    rows_s = _rows_of(settings, "entitled_v1", "cus_s")

    # one-customer rebuilds: the skipped event stays skipped, the parked customer parked
    _run(procs, "replay", "--customer", "cus_s", "--yes")
    _run(procs, "replay", "--customer", "cus_k", "--yes")
    assert entitlements(settings) == everyone
    assert _rows_of(settings, "entitled_v1", "cus_s") == rows_s
    assert _letters(settings, "entitled_v1", "cus_s") == letters_s
    assert _letters(settings, "entitled_v1", "cus_k") == letters_k
    publish(settings, [_subscription("cus_k", "sub_k3", 204)])
    wait_until(lambda: caught_up(settings), 60, "the worker to fold cus_k's new event", procs)
    assert entitlements(settings)["cus_k"] == (["action"], [])
    letters_k = _letters(settings, "entitled_v1", "cus_k")
    assert [s for _e, s in letters_k] == ["poison", "parked", "parked", "parked"]

    # a full replay carries the skip over and gives the same rows as the rebuilds
    _run(procs, "replay", "--yes")
    assert query(settings, "SELECT schema_name FROM entitled.versions WHERE state = 'active'") == [
        ("entitled_v2",)
    ]
    assert entitlements(settings) == everyone
    for customer in ("cus_s", "cus_k"):
        rebuilt = _rows_of(settings, "entitled_v1", customer)
        assert _rows_of(settings, "entitled_v2", customer) == rebuilt, customer
    assert _letters(settings, "entitled_v2", "cus_s") == [(skipped["id"], "skipped")]
    assert _letters(settings, "entitled_v2", "cus_k") == letters_k
