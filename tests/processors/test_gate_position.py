"""The swap gate compares the build and the live version at one log position (issue 24).

A build caught up to the log end while the live worker lagged held the cancellations live
had not folded yet, and the gate counted those customers as losing access: the rolling
upgrade's final swap was refused with 1 of 41 customers "losing". Real Kafka and Postgres,
in-process (`fold_log` plays the live worker)."""

from __future__ import annotations

from typing import Any

from entitled.settings import Settings
from launcher.stripe import events as se
from processors.replay import replay, swap_ready
from tests.support.db import entitlements
from tests.support.infold import fold_log
from tests.support.kafka import publish

CUSTOMERS = [f"cus_p{i}" for i in range(10)]


def _subscription(cus: str, at: int, kind: str = "created", status: str = "active") -> Any:
    sub = se.subscription(
        f"sub_{cus}", customer=cus, items=[("price_pos", "prod_pos")], status=status
    )
    return se.event(f"customer.subscription.{kind}", sub, created=at)


async def test_a_lagging_live_version_is_compared_where_it_stands(settings: Settings) -> None:
    publish(
        settings,
        [se.event("product.created", se.product("prod_pos", groups="action"), created=10)]
        + [_subscription(c, 100) for c in CUSTOMERS],
    )
    await fold_log(settings)
    built = await replay(settings, dry_run=True, progress=False)  # as far as live: ready
    # three cancellations in the log that live has not folded yet
    publish(settings, [_subscription(c, 200, "deleted", "canceled") for c in CUSTOMERS[:3]])

    # 3 of 10 losing would be far above the 1% allowed: compared at live's position, none
    report = await swap_ready(settings, built.version)
    assert report.swapped and report.refusal is None and report.differences == []
    assert entitlements(settings) == {c: (["action"], []) for c in CUSTOMERS}
    # the live worker goes on from where both stood: the cancellations fold into the build
    await fold_log(settings)
    assert entitlements(settings) == {
        c: ([], []) if c in CUSTOMERS[:3] else (["action"], []) for c in CUSTOMERS
    }


async def test_a_dry_run_compares_where_live_stands(settings: Settings) -> None:
    """`replay --dry-run` builds as far as the live version stands, not to the log end: the
    events live has not folded yet are no differences, and the report counts them (built
    to the log end, the three cancellations below were reported as three customers losing
    access, and the gate as refusing a sound build)."""
    publish(
        settings,
        [se.event("product.created", se.product("prod_pos", groups="action"), created=10)]
        + [_subscription(c, 100) for c in CUSTOMERS],
    )
    await fold_log(settings)
    publish(settings, [_subscription(c, 200, "deleted", "canceled") for c in CUSTOMERS[:3]])

    report = await replay(settings, dry_run=True, progress=False)
    assert report.differences == []
    assert (report.refusal, report.behind, report.swapped) == (None, 3, False)

    # live folds the cancellations: the next dry run stands where live does and finds
    # nothing (tests/processors/test_replay.py: a real difference is reported)
    await fold_log(settings)
    report = await replay(settings, dry_run=True, progress=False)
    assert (report.differences, report.behind) == ([], 0)
    assert entitlements(settings) == {
        c: ([], []) if c in CUSTOMERS[:3] else (["action"], []) for c in CUSTOMERS
    }
