"""Stripe Entitlements objects for tests and the demo: features, product features, a
customer's active entitlement summary, and the events that carry them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ingest.snapshots import product_features_event
from launcher.stripe import events as se

__all__ = ["feature", "product_feature", "product_features_snapshot", "summary", "summary_event"]

Obj = dict[str, Any]


def feature(lookup_key: str, *, active: bool = True, id: str | None = None) -> Obj:
    """An `entitlements.feature`."""
    return {
        "id": id or f"feat_{lookup_key.replace(':', '_')}",
        "object": "entitlements.feature",
        "active": active,
        "livemode": False,
        "lookup_key": lookup_key,
        "metadata": {},
        "name": lookup_key,
    }


def product_feature(lookup_key: str, *, active: bool = True) -> Obj:
    """A `product_feature`: one feature attached to a product."""
    return {
        "id": f"prodft_{lookup_key.replace(':', '_')}",
        "object": "product_feature",
        "entitlement_feature": feature(lookup_key, active=active),
        "livemode": False,
    }


def product_features_snapshot(
    product_id: str, lookup_keys: Iterable[str], *, created: int, archived: Iterable[str] = ()
) -> Obj:
    """The `product.features.snapshot` event backfill/reconcile log for a product."""
    listed = [product_feature(k) for k in lookup_keys]
    listed += [product_feature(k, active=False) for k in archived]
    return product_features_event(product_id, listed, api_version=None, read_at=created)


def summary(customer: str, lookup_keys: Iterable[str], *, has_more: bool = False) -> Obj:
    """An `entitlements.active_entitlement_summary` (Stripe lists at most 10 entitlements)."""
    return {
        "object": "entitlements.active_entitlement_summary",
        "customer": customer,
        "entitlements": {
            "object": "list",
            "data": [
                {
                    "id": f"ent_{i}",
                    "object": "entitlements.active_entitlement",
                    "feature": f"feat_{key.replace(':', '_')}",
                    "livemode": False,
                    "lookup_key": key,
                }
                for i, key in enumerate(lookup_keys)
            ],
            "has_more": has_more,
            "url": "/v1/customer/entitlements",
        },
        "livemode": False,
    }


def summary_event(
    customer: str, lookup_keys: Iterable[str], *, created: int, has_more: bool = False
) -> Obj:
    """`entitlements.active_entitlement_summary.updated` for `customer`."""
    return se.event(
        "entitlements.active_entitlement_summary.updated",
        summary(customer, lookup_keys, has_more=has_more),
        created=created,
    )
