"""Pure fold rules, one per Stripe event type, grouped by object family.

Importing this package registers every rule; `rule_for(type)` finds one.
"""

from __future__ import annotations

from projections.model.rules import customers, disputes, features, payments, products, subscriptions
from projections.model.rules._registry import (
    RULES,
    RuleFn,
    RuleSpec,
    fold,
    row_of,
    rule_for,
    stamp_of,
    supersedes,
    view,
)

__all__ = [
    "RULES",
    "RuleFn",
    "RuleSpec",
    "customers",
    "disputes",
    "features",
    "fold",
    "payments",
    "products",
    "row_of",
    "rule_for",
    "stamp_of",
    "subscriptions",
    "supersedes",
    "view",
]
