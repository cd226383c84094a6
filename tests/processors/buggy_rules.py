"""A deliberately wrong rule, loaded as a rule plugin (ENTITLED_RULE_PLUGINS) by the replay
tests: it ignores subscription deletions, so cancelled customers keep their packages."""

from __future__ import annotations

from projections.model.events import StripeEvent
from projections.model.rows import SubscriptionRow
from projections.model.rules import fold


@fold("customer.subscription.deleted", table="subscriptions", override=True)
def ignore_deletion(event: StripeEvent, current: SubscriptionRow | None) -> SubscriptionRow | None:
    return None  # the bug: nothing changes
