"""customer.subscription.*: every event carries the whole subscription; keep the newest."""

from __future__ import annotations

from projections.events import StripeEvent, SubscriptionView
from projections.rows import ItemRow, SubscriptionRow
from projections.rules._registry import fold, stamp_of, view

SUBSCRIPTION_TYPES = (
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.pending_update_applied",
    "customer.subscription.pending_update_expired",
    "customer.subscription.trial_will_end",
)


@fold(*SUBSCRIPTION_TYPES, table="subscriptions")
def subscription_snapshot(event: StripeEvent, current: SubscriptionRow | None) -> SubscriptionRow:
    s = view(event, SubscriptionView)
    status = s.status
    if event.type == "customer.subscription.deleted" and status not in (
        "canceled",
        "incomplete_expired",
    ):
        # deleted means ended, whatever a stale status field says
        status = "canceled"
    return SubscriptionRow(
        id=s.id,
        customer=s.customer,
        status=status,
        cancel_at_period_end=s.cancel_at_period_end,
        items=tuple(
            ItemRow(i.id, i.price, i.product, i.current_period_start, i.current_period_end)
            for i in s.items
        ),
        stamp=stamp_of(event),
        event_id=event.id,
    )
