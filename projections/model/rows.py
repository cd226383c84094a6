"""The mirrored Stripe objects as frozen rows, and the order between their snapshots.

Each row remembers the `Stamp` of the event it came from, so that an older snapshot never
overwrites a newer one whatever order Stripe delivers events in. `to_record` / `from_record`
give the row's lossless JSON form for the Postgres writer (columns + jsonb); both are generated
from the dataclass fields (`projections.model._records`), so adding a field to a row is one
line here and one in its view (`projections.model.events`).

The order between two snapshots of one object, newest wins:

1. a terminal snapshot (`...deleted`, canceled, expired, voided) beats any other: a tombstone
   is never resurrected by an update stamped later by a skewed clock;
2. Stripe's `created` second;
3. the event's rank: update beats create;
4. the object's lifecycle stage (`projections.model.lifecycle.stage_of`): an invoice that is paid
   came after the one that was open, whatever order the two events arrive in;

   (1-4 are the *coarse key*, `coarse`; the writer's SQL upsert guard refuses a snapshot whose
   coarse key is lower than the stored one, and lets equal keys through to this fold.)

5. among snapshots with an equal coarse key, `data.previous_attributes`: each snapshot keeps
   the values it changed (`previous`), so its prior state is known; B follows A when B's prior
   state is A's state. The row keeps its same-key rivals (up to 16 snapshots), and `settle`
   chooses the end of the longest chain over all of them, so the outcome is one for any
   delivery order; the same state twice (invoice.paid + invoice.payment_succeeded) is no tie;
6. only when nothing above decides, log order (partition, offset): a `tie`, counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, TypeAlias

from projections.model._records import Changes, Record, decode, encode
from projections.model.metadata import Metadata

__all__ = [
    "TABLES",
    "TERMINAL_TYPES",
    "Changes",
    "ChargeRow",
    "CustomerRow",
    "DisputeRow",
    "EntitlementSummaryRow",
    "InvoicePaymentRow",
    "ItemRow",
    "Metadata",
    "PriceRow",
    "ProductFeaturesRow",
    "ProductRow",
    "PurchaseKind",
    "PurchaseRow",
    "RefundRow",
    "Row",
    "Stamp",
    "SubscriptionRow",
    "coarse",
    "customer_of",
    "from_record",
    "rank_of",
    "refs_of",
]

PurchaseKind = Literal["checkout_session", "payment_intent", "invoice"]

# Events after which the object changes no more: at a same-second tie they beat an update.
TERMINAL_TYPES = frozenset(
    {
        "customer.subscription.deleted",
        "checkout.session.expired",
        "payment_intent.canceled",
        "invoice.voided",
    }
)


def rank_of(event_type: str) -> int:
    """0 for a creation, 2 for a terminal event, 1 for any other change."""
    if event_type.endswith(".deleted") or event_type in TERMINAL_TYPES:
        return 2
    if event_type.endswith(".created"):
        return 0
    return 1


@dataclass(frozen=True, order=True, slots=True)
class Stamp:
    """Where a snapshot sits in the object's history (see the module docstring for the order):
    Stripe's `created` second, the event's `rank`, the object's lifecycle `stage`, then the
    log position (partition, offset), arbitrary across partitions but the same on every
    replay. Compare with `coarse` for the order the writer's guard enforces."""

    created: int
    rank: int
    stage: int
    partition: int
    offset: int


def coarse(stamp: Stamp) -> tuple[bool, int, int, int]:
    """The order a snapshot has by its own event alone: terminal, created, rank, stage."""
    return (stamp.rank == 2, stamp.created, stamp.rank, stamp.stage)


class _RowBase:
    """Record conversion generated from the dataclass fields."""

    __slots__ = ()
    table: ClassVar[str]

    def to_record(self) -> Record:
        return encode(self)


@dataclass(frozen=True, slots=True)
class ProductRow(_RowBase):
    table: ClassVar[str] = "products"
    id: str
    name: str | None
    active: bool
    deleted: bool
    metadata: Metadata
    stamp: Stamp
    event_id: str
    previous: Changes = ()
    rivals: tuple[ProductRow, ...] = ()


@dataclass(frozen=True, slots=True)
class PriceRow(_RowBase):
    table: ClassVar[str] = "prices"
    id: str
    product: str | None
    active: bool
    deleted: bool
    stamp: Stamp
    event_id: str
    previous: Changes = ()
    rivals: tuple[PriceRow, ...] = ()


@dataclass(frozen=True, slots=True)
class CustomerRow(_RowBase):
    table: ClassVar[str] = "customers"
    id: str
    email: str | None
    name: str | None
    deleted: bool
    stamp: Stamp
    event_id: str
    previous: Changes = ()
    rivals: tuple[CustomerRow, ...] = ()


@dataclass(frozen=True, slots=True)
class ItemRow:
    """A subscription item (also the item of `SubscriptionView`: views and rows share it)."""

    id: str = ""
    price: str | None = None
    product: str | None = None
    current_period_start: int | None = None
    current_period_end: int | None = None
    quantity: int = 1  # Stripe omits it for metered prices: one

    def to_record(self) -> Record:
        return encode(self)


@dataclass(frozen=True, slots=True)
class SubscriptionRow(_RowBase):
    table: ClassVar[str] = "subscriptions"
    id: str
    customer: str | None
    status: str
    cancel_at_period_end: bool
    items: tuple[ItemRow, ...]
    stamp: Stamp
    event_id: str
    previous: Changes = ()
    rivals: tuple[SubscriptionRow, ...] = ()


@dataclass(frozen=True, slots=True)
class PurchaseRow(_RowBase):
    table: ClassVar[str] = "purchases"
    id: str
    customer: str | None
    kind: PurchaseKind
    paid: bool
    amount: int
    metadata: Metadata
    product_ids: tuple[str, ...]
    payment_intent: str | None
    stamp: Stamp
    event_id: str
    previous: Changes = ()
    rivals: tuple[PurchaseRow, ...] = ()
    # Fields an event that does not name them leaves as an earlier event gave them, in any
    # order (`projections.model.rules._registry.RuleSpec.resolve`): current invoice shapes
    # name the payment intent only in an expanded `payments` (a credit note's
    # `invoice.updated` does not), and forgetting the link kept a fully refunded movie
    # granted (issue 19, point 8).
    STICKY: ClassVar[tuple[str, ...]] = ("payment_intent",)


@dataclass(frozen=True, slots=True)
class ChargeRow(_RowBase):
    table: ClassVar[str] = "charges"
    id: str
    customer: str | None
    payment_intent: str | None
    amount: int
    amount_refunded: int
    refunded: bool
    stamp: Stamp
    event_id: str
    previous: Changes = ()
    rivals: tuple[ChargeRow, ...] = ()


@dataclass(frozen=True, slots=True)
class RefundRow(_RowBase):
    table: ClassVar[str] = "refunds"
    id: str
    charge: str | None
    payment_intent: str | None
    amount: int
    status: str | None
    stamp: Stamp
    event_id: str
    # Stripe leaves it null on most refunds; find the customer through the payment intent.
    customer: str | None = None
    previous: Changes = ()
    rivals: tuple[RefundRow, ...] = ()


@dataclass(frozen=True, slots=True)
class DisputeRow(_RowBase):
    """A dispute of a charge (no customer on the object: found through the charge)."""

    table: ClassVar[str] = "disputes"
    id: str
    charge: str | None
    payment_intent: str | None
    status: str | None
    amount: int
    stamp: Stamp
    event_id: str
    previous: Changes = ()
    rivals: tuple[DisputeRow, ...] = ()


@dataclass(frozen=True, slots=True)
class InvoicePaymentRow(_RowBase):
    """Which payment intent paid (part of) an invoice: since basil the invoice itself no
    longer names it (`payments` only when expanded), this object does."""

    table: ClassVar[str] = "invoice_payments"
    id: str
    invoice: str | None
    payment_intent: str | None
    status: str | None
    stamp: Stamp
    event_id: str
    customer: str | None = None  # not on the object today; kept if Stripe adds it
    previous: Changes = ()
    rivals: tuple[InvoicePaymentRow, ...] = ()


@dataclass(frozen=True, slots=True)
class ProductFeaturesRow(_RowBase):
    """The Stripe Entitlements features attached to a product (`/v1/products/{id}/features`),
    as a snapshot read by backfill or reconcile: Stripe sends no webhook for them. id = the
    product."""

    table: ClassVar[str] = "product_features"
    id: str
    lookup_keys: tuple[str, ...]  # sorted, unique; archived features excluded
    stamp: Stamp
    event_id: str
    previous: Changes = ()
    rivals: tuple[ProductFeaturesRow, ...] = ()


@dataclass(frozen=True, slots=True)
class EntitlementSummaryRow(_RowBase):
    """Stripe's active entitlement summary of a customer: the lookup keys of the features
    Stripe says they hold. id = the customer. `has_more`: Stripe's list was cut (at 10) and
    the keys are only its first page until a complete snapshot arrives."""

    table: ClassVar[str] = "entitlement_summaries"
    id: str
    customer: str | None
    lookup_keys: tuple[str, ...]  # sorted, unique
    has_more: bool
    stamp: Stamp
    event_id: str
    previous: Changes = ()
    rivals: tuple[EntitlementSummaryRow, ...] = ()


Row: TypeAlias = (
    ProductRow
    | PriceRow
    | CustomerRow
    | SubscriptionRow
    | PurchaseRow
    | ChargeRow
    | RefundRow
    | DisputeRow
    | InvoicePaymentRow
    | ProductFeaturesRow
    | EntitlementSummaryRow
)

_BY_TABLE: dict[str, type[Row]] = {
    cls.table: cls
    for cls in (
        ProductRow,
        PriceRow,
        CustomerRow,
        SubscriptionRow,
        PurchaseRow,
        ChargeRow,
        RefundRow,
        DisputeRow,
        InvoicePaymentRow,
        ProductFeaturesRow,
        EntitlementSummaryRow,
    )
}
TABLES: tuple[str, ...] = tuple(_BY_TABLE)


def from_record(table: str, rec: Record) -> Row:
    """The row of `table` stored as `rec` (the inverse of `row.to_record()`)."""
    return decode(_BY_TABLE[table], rec)


def customer_of(row: Row) -> str | None:
    """The customer a row concerns (None for products, prices, disputes and most refunds)."""
    if isinstance(row, CustomerRow):
        return row.id
    if isinstance(row, (ProductRow, PriceRow, DisputeRow, ProductFeaturesRow)):
        return None
    return row.customer


def refs_of(row: Row) -> tuple[str, ...]:
    """Ids of the other objects a row points at (products, payment intents, charges,
    invoices), for the writer's lookup index: which subscriptions use this product, which
    refunds, disputes and invoice payments belong to this payment intent, charge or invoice."""
    refs: list[str | None]
    if isinstance(row, SubscriptionRow):
        refs = [i.product for i in row.items]
    elif isinstance(row, PurchaseRow):
        refs = [*row.product_ids, row.payment_intent]
    elif isinstance(row, PriceRow):
        refs = [row.product]
    elif isinstance(row, ChargeRow):
        refs = [row.payment_intent]
    elif isinstance(row, (RefundRow, DisputeRow)):
        refs = [row.payment_intent, row.charge]
    elif isinstance(row, InvoicePaymentRow):
        refs = [row.invoice, row.payment_intent]
    else:
        refs = []
    return tuple(sorted({r for r in refs if r}))
