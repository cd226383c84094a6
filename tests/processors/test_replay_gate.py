"""The swap gate (issue 10, point 8) through real Kafka, Postgres and `entitled` processes:
`replay` refuses to swap in a build of an empty log, or one that takes entitlements away
from more than the allowed share of customers; the refused build stays `ready`, to be
inspected, swapped in later (`--swap N`, with `--force` or a larger `--max-loss`) or dropped.
"""

from __future__ import annotations

from typing import Any

from entitled.settings import Settings
from launcher.stripe import events as se
from tests.support.db import caught_up, entitlements, query
from tests.support.kafka import publish
from tests.support.polling import wait_until
from tests.support.processes import Procs

BUGGY = {"ENTITLED_RULE_PLUGINS": "tests.processors.buggy_rules"}
CUSTOMERS = [f"cus_g{i}" for i in range(10)]


def _subscription(cus: str, at: int, kind: str = "created", status: str = "active") -> Any:
    sub = se.subscription(
        f"sub_{cus}", customer=cus, items=[("price_act", "prod_act")], status=status
    )
    return se.event(f"customer.subscription.{kind}", sub, created=at)


def _fold_live(settings: Settings, procs: Procs, **env: str) -> dict[str, Any]:
    """Ten subscribers, three of whom cancelled; folded by a live worker (with `env`)."""
    publish(
        settings,
        [se.event("product.created", se.product("prod_act", groups="action"), created=10)]
        + [_subscription(c, 100) for c in CUSTOMERS]
        + [_subscription(c, 200, "deleted", "canceled") for c in CUSTOMERS[:3]],
    )
    worker = procs.spawn("worker", **env)
    wait_until(lambda: caught_up(settings), 90, "the live worker", procs)
    worker.stop()
    return entitlements(settings)


def _replay(procs: Procs, *args: str, ok: bool, **env: str) -> str:
    p = procs.spawn("replay", *args, "--yes", name="replay", **env)
    assert p.popen is not None
    p.popen.wait(180)
    assert (p.popen.returncode == 0) is ok, p.tail()
    return p.tail(100)


def _states(settings: Settings) -> list[tuple[int, str]]:
    return query(settings, "SELECT version, state FROM entitled.versions ORDER BY version")


def test_a_build_that_takes_too_much_away_waits_for_the_operator(
    settings: Settings, procs: Procs
) -> None:
    live = _fold_live(settings, procs, **BUGGY)  # the bug: cancelled customers keep access
    assert live == {c: (["action"], []) for c in CUSTOMERS}

    # three of ten entitled customers (30%) would lose access: above the 20% allowed
    out = _replay(procs, ok=False, ENTITLED_REPLAY_MAX_LOSS="0.2")
    assert "swap refused" in out and "3 of the live version's 10" in out, out
    for cus in CUSTOMERS[:3]:
        assert f"{cus}: groups +[] -['action']" in out  # the dry-run report
    assert "3 customers differ" in out
    assert "--swap 2 --force" in out and "--drop 2" in out
    assert _states(settings) == [(1, "active"), (2, "ready")]
    assert entitlements(settings) == live

    # the operator inspected v2 and allows that much loss: v2 is swapped in
    out = _replay(procs, "--swap", "2", "--max-loss", "0.5", ok=True)
    assert "swapped: v2 is active" in out, out
    assert _states(settings) == [(1, "retired"), (2, "active")]
    assert entitlements(settings) == {
        c: ([], []) if c in CUSTOMERS[:3] else (["action"], []) for c in CUSTOMERS
    }


def test_a_build_of_an_empty_log_is_refused(settings: Settings, procs: Procs) -> None:
    live = _fold_live(settings, procs)
    assert len([c for c, (groups, _m) in live.items() if groups]) == 7

    # a typo in the topic: nothing to replay, everyone would lose access
    out = _replay(procs, ok=False, ENTITLED_TOPIC=f"{settings.topic}-typo")
    assert "the log is empty" in out and f"{settings.topic}-typo" in out, out
    assert "7 customers differ" in out
    assert _states(settings) == [(1, "active"), (2, "ready")]
    assert entitlements(settings) == live

    _replay(procs, "--drop", "2", ok=True)
    assert _states(settings) == [(1, "active")]
    # the right topic: nothing is lost, the gate lets the swap through
    _replay(procs, ok=True)
    assert _states(settings) == [(1, "retired"), (2, "active")]  # the number is free again
    assert entitlements(settings) == live
