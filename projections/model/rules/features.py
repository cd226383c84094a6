"""Stripe Entitlements: a product's features (our snapshot) and a customer's active
entitlement summary. Each event is the whole truth for its moment: the row is rebuilt from it,
never merged with what was stored."""

from __future__ import annotations

from projections.model.events import StripeEvent
from projections.model.rows import EntitlementSummaryRow, ProductFeaturesRow
from projections.model.rules._registry import fold, row_of, view
from projections.model.views import EntitlementSummaryView, ProductFeaturesView

# Stripe sends no event for a product's features: backfill and reconcile log this snapshot.
PRODUCT_FEATURES_SNAPSHOT = "product.features.snapshot"
SUMMARY_UPDATED = "entitlements.active_entitlement_summary.updated"
# The hydrator's complete summary (listed to the end when Stripe's event said has_more).
SUMMARY_SNAPSHOT = "entitlements.active_entitlement_summary.snapshot"


@fold(PRODUCT_FEATURES_SNAPSHOT, table="product_features")
def product_features_snapshot(
    event: StripeEvent, current: ProductFeaturesRow | None
) -> ProductFeaturesRow:
    return row_of(ProductFeaturesRow, view(event, ProductFeaturesView), event)


@fold(SUMMARY_UPDATED, SUMMARY_SNAPSHOT, table="entitlement_summaries")
def summary_snapshot(
    event: StripeEvent, current: EntitlementSummaryRow | None
) -> EntitlementSummaryRow:
    s = view(event, EntitlementSummaryView)
    return row_of(EntitlementSummaryRow, s, event, customer=s.customer or s.id)
