"""customer.subscription.*: every event carries the whole subscription; keep the newest."""

from __future__ import annotations

from projections.model.events import StripeEvent
from projections.model.rows import SubscriptionRow
from projections.model.rules._registry import fold, row_of, view
from projections.model.views import SubscriptionView

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
    return row_of(SubscriptionRow, s, event, status=status)
