"""Failure isolation in a real worker: an event Postgres refuses is dead-lettered alone while
every other customer folds; a writer bug stops the worker loudly instead of dead-lettering
the log."""

from __future__ import annotations

import urllib.error
import urllib.request

from entitled.settings import Settings
from launcher.stripe import events as se
from tests.support.db import caught_up, entitlements, query
from tests.support.kafka import publish
from tests.support.polling import wait_until
from tests.support.ports import free_port
from tests.support.processes import Procs


def _sub(customer: str, created: int) -> dict[str, object]:
    sub = se.subscription(f"sub_{customer}", customer=customer, items=[("price_1", "prod_act")])
    return se.event("customer.subscription.created", sub, created=created)


def test_a_row_postgres_refuses_is_dead_lettered_alone(settings: Settings, procs: Procs) -> None:
    customers = [f"cus_ok{i}" for i in range(40)]
    refused = _sub("cus_bad", 100)
    refused["created"] = 2**63  # beyond bigint: Postgres refuses the row's stamp
    bad_sub = se.subscription("sub_cus_bad", customer="cus_bad", items=[("price_1", "prod_act")])
    events = [
        se.event("product.created", se.product("prod_act", groups="action"), created=90),
        *[_sub(c, 100 + i) for i, c in enumerate(customers[:20])],
        refused,
        *[_sub(c, 200 + i) for i, c in enumerate(customers[20:])],
        # The refused snapshot stays the newest (its `created` is the larger), so the writer
        # must write it; this later event of the same customer is parked behind it.
        se.event("customer.subscription.updated", bad_sub, created=300),
    ]
    publish(settings, events)  # before the worker starts: one big batch holds them all
    procs.spawn("worker")
    want = {c: (["action"], []) for c in customers}
    wait_until(lambda: entitlements(settings) == want, 90, "every other customer", procs)
    wait_until(lambda: caught_up(settings), 60, "the worker to reach the log end", procs)
    letters = query(settings, 'SELECT key, state, error FROM live.dead_letters ORDER BY "offset"')
    assert [(k, s) for k, s, _ in letters] == [("cus_bad", "poison"), ("cus_bad", "parked")]
    assert "NumericValueOutOfRange" in letters[0][2] or "out of range" in letters[0][2]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def test_a_writer_bug_stops_the_worker_loudly(settings: Settings, procs: Procs) -> None:
    port = free_port()
    publish(settings, [_sub(f"cus_{i}", 100 + i) for i in range(60)])
    procs.spawn(
        "worker",
        "--metrics-port",
        str(port),
        ENTITLED_RULE_PLUGINS="tests.processors.buggy_writer",
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _get(f"{base}/readyz")[0] == 503, 90, "/readyz to say not ready", procs)
    assert "entitled_worker_stalled 1.0" in _get(f"{base}/metrics")[1]
    (poison,) = query(settings, "SELECT count(*) FROM live.dead_letters WHERE state = 'poison'")[
        0:1
    ]
    assert 0 < poison[0] < 8  # a few before it noticed, never the whole log
    assert query(settings, "SELECT count(*) FROM live.processed_events") == [(0,)]
    assert "folding stopped" in procs.all[0].log.read_text()
