"""What a customer may watch, derived from their mirrored rows (the WebFlicks rules).

Recomputed from the rows every time, never patched by increments, so it cannot drift.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from projections.rows import ChargeRow, ProductRow, PurchaseRow, RefundRow, SubscriptionRow

if TYPE_CHECKING:
    from entitled.settings import Settings

__all__ = ["Entitlement", "Policy", "derive", "split_groups"]


@dataclass(frozen=True)
class Policy:
    group_key: str = "subscription_group"
    movie_key: str = "movie_id"
    entitling_statuses: tuple[str, ...] = ("active", "trialing", "past_due")

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            settings.group_metadata_key,
            settings.movie_metadata_key,
            tuple(settings.entitling_statuses),
        )


@dataclass(frozen=True)
class Entitlement:
    groups: tuple[str, ...]  # sorted, unique
    movie_ids: tuple[str, ...]  # sorted, unique


def split_groups(value: str | None) -> tuple[str, ...]:
    """ "action, animated" -> ("action", "animated"): one or comma-separated, trimmed."""
    return tuple(g.strip() for g in (value or "").split(",") if g.strip())


def _fully_refunded(
    purchases: list[PurchaseRow], charges: Iterable[ChargeRow], refunds: Iterable[RefundRow]
) -> set[str]:
    """Ids of purchases whose payment was fully refunded (a partial refund keeps it)."""
    refunded_pis = {c.payment_intent for c in charges if c.refunded and c.payment_intent}
    refunded_amount: dict[str, int] = defaultdict(int)
    for r in refunds:
        if r.status == "succeeded" and r.payment_intent:
            refunded_amount[r.payment_intent] += r.amount
    out = set()
    for p in purchases:
        pi = p.payment_intent
        if pi is None:
            continue
        total = refunded_amount.get(pi, 0)
        if pi in refunded_pis or (total > 0 and total >= p.amount):
            out.add(p.id)
    return out


def derive(
    subscriptions: Iterable[SubscriptionRow],
    purchases: Iterable[PurchaseRow],
    charges: Iterable[ChargeRow],
    refunds: Iterable[RefundRow],
    products: Mapping[str, ProductRow],
    policy: Policy,
) -> Entitlement:
    """The groups and movie ids a customer holds now, from the rows that concern them.

    `products` may lack a product (it arrives later): it then grants nothing yet.
    """
    groups: set[str] = set()
    for sub in subscriptions:
        if sub.status not in policy.entitling_statuses:
            continue
        for item in sub.items:
            product = products.get(item.product) if item.product else None
            if product is None or product.deleted:
                continue
            groups.update(split_groups(dict(product.metadata).get(policy.group_key)))

    paid = [p for p in purchases if p.paid]
    refunded = _fully_refunded(paid, charges, refunds)
    movies: set[str] = set()
    for p in paid:
        if p.id in refunded:
            continue
        movie = dict(p.metadata).get(policy.movie_key)
        if movie:
            movies.add(movie)
        for product_id in p.product_ids:
            product = products.get(product_id)
            movie = dict(product.metadata).get(policy.movie_key) if product else None
            if movie:
                movies.add(movie)
    return Entitlement(tuple(sorted(groups)), tuple(sorted(movies)))
