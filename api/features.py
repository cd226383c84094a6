"""The `features` of `GET /v1/customers/{id}/entitlements`: each Stripe Entitlements lookup key
the customer holds, with where it comes from (a subscription and the product that carries the
feature, or Stripe's summary) and what it grants here. Derived by the same pure code as the
entitlements (`projections.model.entitlements.feature_keys`), from the records the read returned."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from projections.model.entitlements import Facts, Policy, feature_keys, grants_of_keys
from projections.model.rows import (
    EntitlementSummaryRow,
    ProductFeaturesRow,
    ProductRow,
    SubscriptionRow,
    from_record,
)

__all__ = ["features_of"]


def _row(table: str, record: Any) -> Any:
    """The row of a record, or None for one this release cannot read (the answer must not
    fail on a record written by another release or by hand)."""
    try:
        return from_record(table, record)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _rows(records: Mapping[str, Any] | None, table: str) -> dict[str, Any]:
    return {k: _row(table, v) for k, v in (records or {}).items()}


def features_of(row: Mapping[str, Any], policy: Policy) -> list[dict[str, Any]]:
    """The customer's features from one `search.entitlements` row, sorted by lookup key."""
    subs = [_row("subscriptions", r) for r in row["subscriptions"]]
    summary_row = _row("entitlement_summaries", row.get("summary_record") or {})
    facts = Facts(
        subscriptions=tuple(s for s in subs if isinstance(s, SubscriptionRow)),
        products={
            k: v for k, v in _rows(row["products"], "products").items() if isinstance(v, ProductRow)
        },
        features={
            k: v
            for k, v in _rows(row.get("product_features"), "product_features").items()
            if isinstance(v, ProductFeaturesRow)
        },
        summary=summary_row if isinstance(summary_row, EntitlementSummaryRow) else None,
    )
    sources: dict[str, list[dict[str, Any]]] = {
        key: [{"source": "features", "subscription": s, "product": p} for s, p in found]
        for key, found in feature_keys(facts, policy).items()
    }
    if facts.summary is not None:
        for key in facts.summary.lookup_keys:
            sources.setdefault(key, []).append({"source": "summary"})
    out = []
    for key in sorted(sources):
        groups, movies = grants_of_keys([key], policy)
        out.append(
            {
                "lookup_key": key,
                "groups": sorted(groups),
                "movie_ids": sorted(movies),
                "from": sources[key],
            }
        )
    return out
