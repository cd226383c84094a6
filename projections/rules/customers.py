"""customer.created / updated / deleted."""

from __future__ import annotations

from projections.events import CustomerView, StripeEvent
from projections.rows import CustomerRow
from projections.rules._registry import fold, stamp_of, view


@fold("customer.created", "customer.updated", "customer.deleted", table="customers")
def customer_snapshot(event: StripeEvent, current: CustomerRow | None) -> CustomerRow:
    c = view(event, CustomerView)
    return CustomerRow(
        id=c.id,
        email=c.email,
        name=c.name,
        deleted=c.deleted or event.type == "customer.deleted",
        stamp=stamp_of(event),
        event_id=event.id,
    )
