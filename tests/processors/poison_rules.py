"""A rule that raises, loaded as a rule plugin (ENTITLED_RULE_PLUGINS) by the dead-letter
replay tests: a subscription update whose event id starts with `evt_poison` is poison, in the
live worker and in every replay alike (a genuinely failing rule); other updates fold as
shipped."""

from __future__ import annotations

from projections.model.events import StripeEvent
from projections.model.rows import SubscriptionRow
from projections.model.rules import fold
from projections.model.rules.subscriptions import subscription_snapshot


@fold("customer.subscription.updated", table="subscriptions", override=True)
def poisoned_update(event: StripeEvent, current: SubscriptionRow | None) -> SubscriptionRow:
    if event.id.startswith("evt_poison"):
        raise RuntimeError(f"the test's poison: {event.id}")
    return subscription_snapshot(event, current)
