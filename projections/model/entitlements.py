"""What a customer may watch, derived from their mirrored rows (the WebFlicks rules).

Recomputed from the rows every time, never patched by increments, so it cannot drift.
`derive` reads one typed input, `Facts`: everything the rules look at for one customer.
`gather` builds the Facts of many customers from a pool of loaded rows: rows that name the
customer, and the link rows (refunds, disputes, invoice payments; Stripe rarely names the
customer on them) that point at the ids of that customer's rows (`link_keys`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from projections.model.metadata import groups_in, movies_in, split_groups
from projections.model.rows import (
    ChargeRow,
    CustomerRow,
    DisputeRow,
    EntitlementSummaryRow,
    InvoicePaymentRow,
    ProductFeaturesRow,
    ProductRow,
    PurchaseRow,
    RefundRow,
    Row,
    SubscriptionRow,
    customer_of,
    refs_of,
)
from projections.model.rows import ItemRow as ItemRow

if TYPE_CHECKING:
    from entitled.settings import Settings

R = TypeVar("R", bound=Row)

__all__ = [
    "GRANT_SOURCES",
    "Entitlement",
    "Facts",
    "Policy",
    "derive",
    "entitling_items",
    "feature_keys",
    "gather",
    "grants_of_keys",
    "link_keys",
    "product_ids",
    "revoked",
    "split_groups",
]


# What may grant access (ENTITLED_GRANTS): product metadata (the WebFlicks rule), Stripe
# Entitlements features of the products a customer subscribes to (our derivation), Stripe's
# active entitlement summary (as folded).
GRANT_SOURCES = ("metadata", "features", "summary")


@dataclass(frozen=True)
class Policy:
    group_key: str = "subscription_group"
    movie_key: str = "movie_id"
    entitling_statuses: tuple[str, ...] = ("active", "trialing", "past_due")
    grants: tuple[str, ...] = GRANT_SOURCES
    # a feature's lookup key names what it sells: `group:action`, `movie:42`
    group_prefix: str = "group:"
    movie_prefix: str = "movie:"

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            settings.group_metadata_key,
            settings.movie_metadata_key,
            tuple(settings.entitling_statuses),
            tuple(settings.grants),
            settings.feature_group_prefix,
            settings.feature_movie_prefix,
        )


@dataclass(frozen=True)
class Entitlement:
    groups: tuple[str, ...]  # sorted, unique
    movie_ids: tuple[str, ...]  # sorted, unique


@dataclass(frozen=True)
class Facts:
    """Everything the rules read about one customer. `products` may lack a product (it
    arrives later): it then grants nothing yet."""

    customer: CustomerRow | None = None
    subscriptions: tuple[SubscriptionRow, ...] = ()
    purchases: tuple[PurchaseRow, ...] = ()
    charges: tuple[ChargeRow, ...] = ()
    refunds: tuple[RefundRow, ...] = ()
    disputes: tuple[DisputeRow, ...] = ()
    invoice_payments: tuple[InvoicePaymentRow, ...] = ()
    products: Mapping[str, ProductRow] = field(default_factory=dict)
    # product id -> its Stripe Entitlements features; a product absent has none (yet)
    features: Mapping[str, ProductFeaturesRow] = field(default_factory=dict)
    summary: EntitlementSummaryRow | None = None  # Stripe's active entitlement summary

    def rows(self) -> Iterator[Row]:
        """Every row the Facts hold, the products in use included (the newest of them is
        the event the entitlements are current as of)."""
        if self.customer is not None:
            yield self.customer
        yield from self.subscriptions
        yield from self.purchases
        yield from self.charges
        yield from self.refunds
        yield from self.disputes
        yield from self.invoice_payments
        if self.summary is not None:
            yield self.summary
        used = product_ids([*self.subscriptions, *self.purchases])
        yield from (self.products[p] for p in sorted(used) if p in self.products)
        yield from (self.features[p] for p in sorted(used) if p in self.features)


def product_ids(rows: Iterable[Row]) -> set[str]:
    """The products that subscriptions' items and purchases name (to load them)."""
    out: set[str] = set()
    for row in rows:
        if isinstance(row, SubscriptionRow):
            out.update(i.product for i in row.items if i.product)
        elif isinstance(row, PurchaseRow):
            out.update(row.product_ids)
    return out


def link_keys(rows: Iterable[Row]) -> set[str]:
    """The ids a customer's rows let link rows point at: their purchases (id and payment
    intent), charges (id and payment intent) and invoice payments (payment intent)."""
    out: set[str] = set()
    for row in rows:
        if isinstance(row, (PurchaseRow, ChargeRow)):
            out.add(row.id)
            if row.payment_intent:
                out.add(row.payment_intent)
        elif isinstance(row, InvoicePaymentRow) and row.payment_intent:
            out.add(row.payment_intent)
    return out


def _reached(
    keys: set[str], by_ref: Mapping[str, list[Row]], kinds: tuple[type[Row], ...]
) -> list[Row]:
    return [r for k in sorted(keys) for r in by_ref.get(k, ()) if isinstance(r, kinds)]


def gather(
    customers: Sequence[str],
    rows: Iterable[Row],
    products: Mapping[str, ProductRow],
    features: Mapping[str, ProductFeaturesRow] | None = None,
) -> dict[str, Facts]:
    """The Facts of each of `customers` from a pool of rows (any tables, loaded by customer
    and by `refs && link_keys(...)`): the rows that name the customer, then the invoice
    payments of their invoices (which add payment intents), the charges of those payment
    intents (which add charge ids), then the refunds and disputes of any of those ids."""
    own: dict[str, list[Row]] = defaultdict(list)
    by_ref: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        customer = customer_of(row)
        if customer is not None:
            own[customer].append(row)
        for ref in refs_of(row):
            by_ref[ref].append(row)
    out: dict[str, Facts] = {}
    for c in customers:
        mine: dict[tuple[str, str], Row] = {(type(r).table, r.id): r for r in own.get(c, ())}
        # invoice payments add payment intents, whose charges add charge ids: each step
        # reaches with the keys of all the steps before it (no keys at first: none later,
        # the common case of a customer who bought nothing one-off)
        if by_ref and link_keys(mine.values()):
            for kinds in ((InvoicePaymentRow,), (ChargeRow,), (RefundRow, DisputeRow)):
                for r in _reached(link_keys(mine.values()), by_ref, kinds):
                    mine.setdefault((type(r).table, r.id), r)
        # by table, each in id order (one pass; the same tuples as filtering a sorted list)
        by_table: dict[str, list[Row]] = defaultdict(list)
        for key in sorted(mine):
            by_table[key[0]].append(mine[key])
        out[c] = Facts(
            customer=_first(by_table, CustomerRow),
            subscriptions=_all(by_table, SubscriptionRow),
            purchases=_all(by_table, PurchaseRow),
            charges=_all(by_table, ChargeRow),
            refunds=_all(by_table, RefundRow),
            disputes=_all(by_table, DisputeRow),
            invoice_payments=_all(by_table, InvoicePaymentRow),
            products=products,
            features=features or {},
            summary=_first(by_table, EntitlementSummaryRow),
        )
    return out


def _all(by_table: Mapping[str, list[Row]], kind: type[R]) -> tuple[R, ...]:
    return tuple(r for r in by_table.get(kind.table, ()) if isinstance(r, kind))


def _first(by_table: Mapping[str, list[Row]], kind: type[R]) -> R | None:
    return next((r for r in by_table.get(kind.table, ()) if isinstance(r, kind)), None)


def _intents(p: PurchaseRow, invoice_payments: Iterable[InvoicePaymentRow]) -> set[str]:
    """The payment intents that paid for a purchase: its own (a payment intent pays for
    itself) and, for an invoice, those its invoice payments name."""
    out = {p.payment_intent} if p.payment_intent else set()
    if p.kind == "payment_intent":
        out.add(p.id)
    if p.kind == "invoice":
        out.update(
            ip.payment_intent for ip in invoice_payments if ip.invoice == p.id and ip.payment_intent
        )
    return out


def revoked(p: PurchaseRow, facts: Facts) -> bool:
    """A purchase is taken back when its payment was fully refunded or a dispute of it was
    lost (a partial refund keeps it, as does a won or warning_closed dispute)."""
    intents = _intents(p, facts.invoice_payments)
    charges = [c for c in facts.charges if c.payment_intent in intents]
    charge_ids = {c.id for c in charges}
    if any(c.refunded for c in charges):
        return True
    refunded = sum(
        r.amount
        for r in facts.refunds
        if r.status == "succeeded" and (r.payment_intent in intents or r.charge in charge_ids)
    )
    if refunded > 0 and refunded >= p.amount:
        return True
    return any(
        d.status == "lost" and (d.payment_intent in intents or d.charge in charge_ids)
        for d in facts.disputes
    )


def feature_keys(facts: Facts, policy: Policy) -> dict[str, list[tuple[str, str]]]:
    """Our derivation: the lookup keys a customer holds, each with where it comes from
    (subscription, product): an item of quantity > 0, of a subscription in an entitling
    status, whose (not deleted) product carries the feature."""
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for sub in facts.subscriptions:
        if sub.status not in policy.entitling_statuses:
            continue
        for item in sub.items:
            if not item.product or item.quantity <= 0:
                continue
            product = facts.products.get(item.product)
            attached = facts.features.get(item.product)
            if attached is None or (product is not None and product.deleted):
                continue
            for key in attached.lookup_keys:
                out[key].append((sub.id, item.product))
    return dict(sorted(out.items()))


def grants_of_keys(keys: Iterable[str], policy: Policy) -> tuple[set[str], set[str]]:
    """The (groups, movie ids) that feature lookup keys name; other keys name nothing we sell."""
    groups: set[str] = set()
    movies: set[str] = set()
    for key in keys:
        if policy.group_prefix and key.startswith(policy.group_prefix):
            groups.update(g for g in [key[len(policy.group_prefix) :].strip()] if g)
        elif policy.movie_prefix and key.startswith(policy.movie_prefix):
            movies.update(m for m in [key[len(policy.movie_prefix) :].strip()] if m)
    return groups, movies


def entitling_items(
    facts: Facts, policy: Policy
) -> Iterator[tuple[SubscriptionRow, ItemRow, ProductRow]]:
    """(subscription, item, product) of each item of quantity > 0 of a subscription in an
    entitling status whose product is known and not deleted."""
    for sub in facts.subscriptions:
        if sub.status not in policy.entitling_statuses:
            continue
        for item in sub.items:
            product = facts.products.get(item.product) if item.product else None
            if product is None or product.deleted or item.quantity <= 0:
                continue
            yield sub, item, product


def _by_metadata(facts: Facts, policy: Policy) -> tuple[set[str], set[str]]:
    """Today's WebFlicks rule: product metadata of entitling subscriptions' items, and
    movies bought once and not taken back."""
    groups: set[str] = set()
    for _, _, sold in entitling_items(facts, policy):
        groups.update(groups_in(sold.metadata, policy.group_key))

    movies: set[str] = set()
    for p in facts.purchases:
        if not p.paid or revoked(p, facts):
            continue
        movies.update(movies_in(p.metadata, policy.movie_key))
        for product_id in p.product_ids:
            product = facts.products.get(product_id)
            if product is not None:
                movies.update(movies_in(product.metadata, policy.movie_key))
    return groups, movies


def derive(facts: Facts, policy: Policy) -> Entitlement:
    """The groups and movie ids a customer holds now: the union of the enabled grant sources
    (`policy.grants`). A deleted customer holds nothing; a subscription item of quantity 0
    grants nothing."""
    if facts.customer is not None and facts.customer.deleted:
        return Entitlement((), ())
    groups: set[str] = set()
    movies: set[str] = set()
    if "metadata" in policy.grants:
        g, m = _by_metadata(facts, policy)
        groups |= g
        movies |= m
    if "features" in policy.grants:
        g, m = grants_of_keys(feature_keys(facts, policy), policy)
        groups |= g
        movies |= m
    if "summary" in policy.grants and facts.summary is not None:
        g, m = grants_of_keys(facts.summary.lookup_keys, policy)
        groups |= g
        movies |= m
    return Entitlement(tuple(sorted(groups)), tuple(sorted(movies)))
