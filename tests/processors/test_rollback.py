"""`replay --rollback` catches the retired version up with the log before it serves, then
passes the swap gate (issue 19, point 3). Served as it was left at the swap, everything
bought since then disappeared from search, cancellations regained access, and the feed
published both flips. Real Kafka and Postgres, in-process (no worker runs after the
rollback: what it serves at once is what the test reads)."""

from __future__ import annotations

from entitled.settings import Settings
from launcher.stripe import events as se
from processors.replay import replay, roll_back
from tests.support.db import entitlements, query
from tests.support.infold import fold_log
from tests.support.kafka import publish


def _subscribed(customer: str, status: str = "active", sub: str | None = None) -> dict[str, object]:
    obj = se.subscription(sub, customer=customer, items=[("price_rb", "prod_rb")], status=status)
    kind = (
        "customer.subscription.created" if status == "active" else "customer.subscription.deleted"
    )
    return se.event(kind, obj, created=2000 if status == "active" else 3000)


async def test_rollback_serves_what_arrived_since_the_swap(settings: Settings) -> None:
    product = se.event("product.created", se.product("prod_rb", groups="action"), created=1000)
    publish(settings, [product, _subscribed("cus_before", sub="sub_before")])
    await fold_log(settings)
    report = await replay(settings, progress=False)  # v2 active, v1 retired
    assert report.swapped
    # between the swap and the rollback: a purchase and a cancellation
    publish(
        settings, [_subscribed("cus_since"), _subscribed("cus_before", "canceled", "sub_before")]
    )
    await fold_log(settings)
    assert entitlements(settings) == {"cus_since": (["action"], []), "cus_before": ([], [])}

    assert await roll_back(settings) == report.version - 1
    assert entitlements(settings) == {"cus_since": (["action"], []), "cus_before": ([], [])}
    flips = query(settings, "SELECT count(*) FROM entitled.changes WHERE cause = 'rollback'")
    assert flips == [(0,)]  # nothing differs: no customer flips
