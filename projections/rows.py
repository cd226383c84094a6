"""The mirrored Stripe objects as frozen rows, and the order between their snapshots.

Each row remembers the `Stamp` of the event it came from, so that an older snapshot never
overwrites a newer one whatever order Stripe delivers events in. `to_record` / `from_record`
give the row's lossless JSON form for the Postgres writer (columns + jsonb).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeAlias, cast

__all__ = [
    "TABLES",
    "TERMINAL_TYPES",
    "ChargeRow",
    "CustomerRow",
    "ItemRow",
    "Metadata",
    "PriceRow",
    "ProductRow",
    "PurchaseKind",
    "PurchaseRow",
    "RefundRow",
    "Row",
    "Stamp",
    "SubscriptionRow",
    "customer_of",
    "from_record",
    "rank_of",
    "refs_of",
]

Metadata = tuple[tuple[str, str], ...]
PurchaseKind = Literal["checkout_session", "payment_intent", "invoice"]
Record = dict[str, Any]

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
    """Where a snapshot sits in the object's history; a greater Stamp is newer.

    Stripe's `created` second first; same-second ties: terminal beats update beats create
    (`rank`), then the object's lifecycle (`stage`: an invoice that is paid came after the
    one that was open); then log order (partition, offset), which is arbitrary across
    partitions but the same on every replay, so the fold stays deterministic.
    """

    created: int
    rank: int
    stage: int
    partition: int
    offset: int

    def to_record(self) -> Record:
        return {
            "created": self.created,
            "rank": self.rank,
            "stage": self.stage,
            "partition": self.partition,
            "offset": self.offset,
        }

    @classmethod
    def from_record(cls, rec: Record) -> Stamp:
        return cls(
            rec["created"], rec["rank"], rec.get("stage", 0), rec["partition"], rec["offset"]
        )


def _meta_from(rec: dict[str, str]) -> Metadata:
    return tuple(sorted(rec.items()))


class _RowBase:
    """Shared record conversion: every field as is, `stamp` nested, tuples as lists."""

    __slots__ = ()
    table: ClassVar[str]

    def to_record(self) -> Record:
        rec: Record = {}
        names: tuple[str, ...] = getattr(self, "__slots__")  # noqa: B009 (the subclass's)
        for name in names:
            rec[name] = _encode(getattr(self, name))
        if "metadata" in rec:
            rec["metadata"] = dict(getattr(self, "metadata"))  # noqa: B009
        return rec


def _encode(value: Any) -> Any:
    if isinstance(value, Stamp):
        return value.to_record()
    if isinstance(value, ItemRow):
        return value.to_record()
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    return value


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

    @classmethod
    def from_record(cls, rec: Record) -> ProductRow:
        return cls(
            rec["id"],
            rec["name"],
            rec["active"],
            rec["deleted"],
            _meta_from(rec["metadata"]),
            Stamp.from_record(rec["stamp"]),
            rec["event_id"],
        )


@dataclass(frozen=True, slots=True)
class PriceRow(_RowBase):
    table: ClassVar[str] = "prices"
    id: str
    product: str | None
    active: bool
    deleted: bool
    stamp: Stamp
    event_id: str

    @classmethod
    def from_record(cls, rec: Record) -> PriceRow:
        return cls(
            rec["id"],
            rec["product"],
            rec["active"],
            rec["deleted"],
            Stamp.from_record(rec["stamp"]),
            rec["event_id"],
        )


@dataclass(frozen=True, slots=True)
class CustomerRow(_RowBase):
    table: ClassVar[str] = "customers"
    id: str
    email: str | None
    name: str | None
    deleted: bool
    stamp: Stamp
    event_id: str

    @classmethod
    def from_record(cls, rec: Record) -> CustomerRow:
        return cls(
            rec["id"],
            rec["email"],
            rec["name"],
            rec["deleted"],
            Stamp.from_record(rec["stamp"]),
            rec["event_id"],
        )


@dataclass(frozen=True, slots=True)
class ItemRow:
    id: str
    price: str | None
    product: str | None
    current_period_start: int | None
    current_period_end: int | None

    def to_record(self) -> Record:
        return {
            "id": self.id,
            "price": self.price,
            "product": self.product,
            "current_period_start": self.current_period_start,
            "current_period_end": self.current_period_end,
        }

    @classmethod
    def from_record(cls, rec: Record) -> ItemRow:
        return cls(
            rec["id"],
            rec["price"],
            rec["product"],
            rec["current_period_start"],
            rec["current_period_end"],
        )


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

    @classmethod
    def from_record(cls, rec: Record) -> SubscriptionRow:
        return cls(
            rec["id"],
            rec["customer"],
            rec["status"],
            rec["cancel_at_period_end"],
            tuple(ItemRow.from_record(i) for i in rec["items"]),
            Stamp.from_record(rec["stamp"]),
            rec["event_id"],
        )


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

    @classmethod
    def from_record(cls, rec: Record) -> PurchaseRow:
        return cls(
            rec["id"],
            rec["customer"],
            cast(PurchaseKind, rec["kind"]),
            rec["paid"],
            rec["amount"],
            _meta_from(rec["metadata"]),
            tuple(rec["product_ids"]),
            rec["payment_intent"],
            Stamp.from_record(rec["stamp"]),
            rec["event_id"],
        )


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

    @classmethod
    def from_record(cls, rec: Record) -> ChargeRow:
        return cls(
            rec["id"],
            rec["customer"],
            rec["payment_intent"],
            rec["amount"],
            rec["amount_refunded"],
            rec["refunded"],
            Stamp.from_record(rec["stamp"]),
            rec["event_id"],
        )


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

    @classmethod
    def from_record(cls, rec: Record) -> RefundRow:
        return cls(
            rec["id"],
            rec["charge"],
            rec["payment_intent"],
            rec["amount"],
            rec["status"],
            Stamp.from_record(rec["stamp"]),
            rec["event_id"],
            rec.get("customer"),
        )


Row: TypeAlias = (
    ProductRow | PriceRow | CustomerRow | SubscriptionRow | PurchaseRow | ChargeRow | RefundRow
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
    )
}
TABLES: tuple[str, ...] = tuple(_BY_TABLE)


def from_record(table: str, rec: Record) -> Row:
    """The row of `table` stored as `rec` (the inverse of `row.to_record()`)."""
    return _BY_TABLE[table].from_record(rec)


def customer_of(row: Row) -> str | None:
    """The customer a row concerns (None for products, prices and most refunds)."""
    if isinstance(row, CustomerRow):
        return row.id
    if isinstance(row, (ProductRow, PriceRow)):
        return None
    return row.customer


def refs_of(row: Row) -> tuple[str, ...]:
    """Ids of the other objects a row points at (products, payment intents, charges), for
    the writer's lookup index: which subscriptions use this product, which refunds and
    charges belong to this payment intent."""
    refs: list[str | None]
    if isinstance(row, SubscriptionRow):
        refs = [i.product for i in row.items]
    elif isinstance(row, PurchaseRow):
        refs = [*row.product_ids, row.payment_intent]
    elif isinstance(row, PriceRow):
        refs = [row.product]
    elif isinstance(row, ChargeRow):
        refs = [row.payment_intent]
    elif isinstance(row, RefundRow):
        refs = [row.payment_intent, row.charge]
    else:
        refs = []
    return tuple(sorted({r for r in refs if r}))
