"""customer.created / updated / deleted."""

from __future__ import annotations

from projections.model.events import StripeEvent
from projections.model.rows import CustomerRow
from projections.model.rules._registry import fold, row_of, view
from projections.model.views import CustomerView


@fold("customer.created", "customer.updated", "customer.deleted", table="customers")
def customer_snapshot(event: StripeEvent, current: CustomerRow | None) -> CustomerRow:
    c = view(event, CustomerView)
    # customer.deleted may carry the customer as it was, without `deleted: true`
    return row_of(CustomerRow, c, event, deleted=c.deleted or event.type == "customer.deleted")
