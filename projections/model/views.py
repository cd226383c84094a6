"""The typed views of Stripe objects the fold rules read: small frozen dataclasses, one per
object type, each holding only the fields some rule reads (built by `projections.model.events`)."""

from __future__ import annotations

from dataclasses import dataclass

from projections.model.metadata import Metadata
from projections.model.rows import ItemRow

__all__ = [
    "ChargeView",
    "CheckoutSessionView",
    "CustomerView",
    "DisputeView",
    "EntitlementSummaryView",
    "InvoicePaymentView",
    "InvoiceView",
    "ItemView",
    "LineView",
    "ObjectView",
    "PaymentIntentView",
    "PriceView",
    "ProductFeaturesView",
    "ProductView",
    "RefundView",
    "SubscriptionView",
]

# A subscription item reads exactly what the row stores: one class for both.
ItemView = ItemRow


@dataclass(frozen=True, slots=True)
class ProductView:
    id: str
    name: str | None = None
    active: bool = True
    deleted: bool = False
    metadata: Metadata = ()


@dataclass(frozen=True, slots=True)
class PriceView:
    id: str
    product: str | None = None
    active: bool = True
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class CustomerView:
    id: str
    email: str | None = None
    name: str | None = None
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    id: str
    customer: str | None = None
    status: str = ""
    cancel_at_period_end: bool = False
    items: tuple[ItemView, ...] = ()


@dataclass(frozen=True, slots=True)
class CheckoutSessionView:
    id: str
    customer: str | None = None
    mode: str | None = None
    status: str | None = None
    payment_status: str | None = None
    payment_intent: str | None = None
    amount_total: int = 0
    metadata: Metadata = ()
    # from `line_items` (present when expanded: hydrated snapshots carry it), sorted
    product_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PaymentIntentView:
    id: str
    customer: str | None = None
    status: str | None = None
    amount: int = 0
    metadata: Metadata = ()


@dataclass(frozen=True, slots=True)
class LineView:
    price: str | None = None
    product: str | None = None


@dataclass(frozen=True, slots=True)
class InvoiceView:
    id: str
    customer: str | None = None
    status: str | None = None
    subscription: str | None = None
    payment_intent: str | None = None
    amount_paid: int = 0
    lines: tuple[LineView, ...] = ()
    metadata: Metadata = ()


@dataclass(frozen=True, slots=True)
class ChargeView:
    id: str
    customer: str | None = None
    payment_intent: str | None = None
    amount: int = 0
    amount_refunded: int = 0
    refunded: bool = False
    captured: bool = False
    status: str | None = None


@dataclass(frozen=True, slots=True)
class RefundView:
    id: str
    charge: str | None = None
    payment_intent: str | None = None
    amount: int = 0
    status: str | None = None
    customer: str | None = None


@dataclass(frozen=True, slots=True)
class DisputeView:
    id: str
    charge: str | None = None
    payment_intent: str | None = None
    status: str | None = None
    amount: int = 0


@dataclass(frozen=True, slots=True)
class InvoicePaymentView:
    id: str
    invoice: str | None = None
    payment_intent: str | None = None
    status: str | None = None
    customer: str | None = None


@dataclass(frozen=True, slots=True)
class ProductFeaturesView:
    """A `product.features.snapshot`: a product's features as listed (id = the product)."""

    id: str
    lookup_keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EntitlementSummaryView:
    """Stripe's `entitlements.active_entitlement_summary` (it has no id: the customer is)."""

    id: str
    customer: str | None = None
    lookup_keys: tuple[str, ...] = ()
    has_more: bool = False


ObjectView = (
    ProductView
    | PriceView
    | CustomerView
    | SubscriptionView
    | CheckoutSessionView
    | PaymentIntentView
    | InvoiceView
    | ChargeView
    | RefundView
    | DisputeView
    | InvoicePaymentView
    | ProductFeaturesView
    | EntitlementSummaryView
)
