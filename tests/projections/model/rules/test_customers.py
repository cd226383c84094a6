"""customer.* rules."""

from __future__ import annotations

from launcher.stripe import events as se
from projections.model.rules.customers import customer_snapshot
from tests.support.parsed import ev


def test_customer_lifecycle() -> None:
    c = customer_snapshot(ev("customer.created", se.customer("cus_1", email="a@b.c")), None)
    assert (c.id, c.email, c.deleted, c.stamp.rank) == ("cus_1", "a@b.c", False, 0)
    u = customer_snapshot(ev("customer.updated", se.customer("cus_1", name="Ann")), c)
    assert u.name == "Ann" and not u.deleted
    d = customer_snapshot(ev("customer.deleted", se.customer("cus_1")), u)
    assert d.deleted and d.stamp.rank == 2
