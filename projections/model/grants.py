"""Why a customer holds each group and movie: the grant sources behind `derive`'s answer.

`derive` (projections.model.entitlements) says *what* a customer holds; `grants` says *why*,
source by source, with the event that put each source in place: the subscription and item
whose product's metadata names a group, the Stripe Entitlements feature a subscribed product
carries, a key of Stripe's active entitlement summary, or a purchase not taken back. The
writer stores it in each history row (`projections.history`), so `explain` at a past moment
reads the reasons as they were then, without mirrored rows versioned in time.

The sets it names are exactly `derive`'s (same policy, same rules): a test holds them equal.
"""

from __future__ import annotations

from typing import Any

from projections.model.entitlements import (
    Facts,
    Policy,
    entitling_items,
    feature_keys,
    grants_of_keys,
    revoked,
)
from projections.model.metadata import groups_in, movies_in

__all__ = ["Grants", "grants"]

# {"groups": {group: [source, ...]}, "movies": {movie id: [source, ...]}}; a source is a small
# JSON object: {"source": "metadata" | "feature" | "summary" | "purchase", ...ids, "event_id"}
Grants = dict[str, dict[str, list[dict[str, Any]]]]


def grants(facts: Facts, policy: Policy) -> Grants:
    """Every source granting each group and movie `facts` hold under `policy`."""
    out: Grants = {"groups": {}, "movies": {}}
    if facts.customer is not None and facts.customer.deleted:
        return out

    def add(kind: str, name: str, source: dict[str, Any]) -> None:
        out[kind].setdefault(name, []).append(source)

    if "metadata" in policy.grants:
        for sub, item, product in entitling_items(facts, policy):
            for g in groups_in(product.metadata, policy.group_key):
                add(
                    "groups",
                    g,
                    {
                        "source": "metadata",
                        "subscription": sub.id,
                        "status": sub.status,
                        "item": item.id or None,
                        "product": product.id,
                        "metadata_key": policy.group_key,
                        "event_id": sub.event_id,
                        "product_event_id": product.event_id,
                    },
                )
        for p in facts.purchases:
            if not p.paid or revoked(p, facts):
                continue
            named: list[tuple[str, str | None]] = [
                (m, None) for m in movies_in(p.metadata, policy.movie_key)
            ]
            for bought in p.product_ids:
                found = facts.products.get(bought)
                if found is not None:
                    named += [(m, bought) for m in movies_in(found.metadata, policy.movie_key)]
            for movie, by_product in named:
                add(
                    "movies",
                    movie,
                    {
                        "source": "purchase",
                        "purchase": p.id,
                        "kind": p.kind,
                        "product": by_product,
                        "event_id": p.event_id,
                    },
                )
    if "features" in policy.grants:
        for key, holders in feature_keys(facts, policy).items():
            kg, km = grants_of_keys([key], policy)
            for sub_id, product_id in holders:
                held = next(s for s in facts.subscriptions if s.id == sub_id)
                item_id = next((i.id for i in held.items if i.product == product_id), None)
                attached = facts.features.get(product_id)
                source = {
                    "source": "feature",
                    "lookup_key": key,
                    "subscription": sub_id,
                    "status": held.status,
                    "item": item_id or None,
                    "product": product_id,
                    "event_id": held.event_id,
                    "feature_event_id": None if attached is None else attached.event_id,
                }
                for name in sorted(kg):
                    add("groups", name, source)
                for name in sorted(km):
                    add("movies", name, source)
    if "summary" in policy.grants and facts.summary is not None:
        for key in facts.summary.lookup_keys:
            sg, sm = grants_of_keys([key], policy)
            summary = {"source": "summary", "lookup_key": key, "event_id": facts.summary.event_id}
            for name in sorted(sg):
                add("groups", name, summary)
            for name in sorted(sm):
                add("movies", name, summary)
    return {kind: dict(sorted(found.items())) for kind, found in out.items()}
