"""Stall detection counts distinct failing customers within a window (issue 19, point 4): a
bug in recompute that fails every customer's event stops the worker loudly, even though
no-op events (prices, unknown types) keep applying between the failures. Counting failures
"in a row" was reset by each of those, and the bug dead-lettered every paying customer one
by one. Real Kafka, real Postgres, the real runner and writer; only derive is broken."""

from __future__ import annotations

import pytest

from entitled.settings import Settings
from launcher.stripe import events as se
from processors.errors import WriterStalled
from projections import recompute
from tests.support.db import active_schema, query
from tests.support.infold import fold_log
from tests.support.kafka import publish


async def test_a_bug_failing_every_customer_stalls_despite_no_op_events(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = []
    for n in range(24):
        sub = se.subscription(customer=f"cus_stall{n}", items=[("price_st", "prod_st")])
        events.append(se.event("customer.subscription.created", sub, created=1000 + n))
        # a no-op between every two customers: applies whatever the bug
        events.append(se.event("radar.early_fraud_warning.created", {"id": f"issfr_{n}"}))
    publish(settings, events)

    def broken(*args: object, **kwargs: object) -> object:
        raise ValueError("a bug in derive")

    monkeypatch.setattr(recompute, "derive", broken)
    with pytest.raises(WriterStalled):
        await fold_log(settings, stall_after_keys=4)
    letters = query(settings, f"SELECT DISTINCT key FROM {active_schema(settings)}.dead_letters")
    assert len(letters) < 4  # stopped, not one paying customer after another dead-lettered
