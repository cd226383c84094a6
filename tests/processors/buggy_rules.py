"""A deliberately wrong rule, loaded as a rule plugin (ENTITLED_RULE_PLUGINS) by the replay
tests: it ignores subscription deletions, so cancelled customers keep their packages."""

from __future__ import annotations

from projections.events import StripeEvent
from projections.rows import SubscriptionRow
from projections.rules import fold


@fold("customer.subscription.deleted", table="subscriptions", override=True)
def ignore_deletion(event: StripeEvent, current: SubscriptionRow | None) -> SubscriptionRow | None:
    return None  # the bug: nothing changes
