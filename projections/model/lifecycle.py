"""The lifecycle stage of an object: a number that never goes down as the object lives, so
that of two snapshots taken within the same second the later stage wins (the order is
documented in `projections.model.rows`)."""

from __future__ import annotations

from projections.model.views import (
    ChargeView,
    CheckoutSessionView,
    DisputeView,
    InvoicePaymentView,
    InvoiceView,
    ObjectView,
    PaymentIntentView,
    RefundView,
    SubscriptionView,
)

__all__ = ["stage_of"]

_INVOICE = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3}
_PAYMENT_INTENT = {"processing": 1, "requires_capture": 2, "succeeded": 3, "canceled": 3}
_SESSION = {"open": 0, "complete": 1, "expired": 1}
_REFUND = {"succeeded": 1, "failed": 1, "canceled": 1}
_DISPUTE = {
    "warning_needs_response": 0,
    "needs_response": 0,
    "warning_under_review": 1,
    "under_review": 1,
    "won": 2,
    "lost": 2,
    "warning_closed": 2,
    "prevented": 2,
}
_INVOICE_PAYMENT = {"open": 0, "paid": 1, "canceled": 1}


def stage_of(obj: ObjectView | None) -> int:
    """Where the object is in its lifecycle, a number that never goes down as the object
    lives: an invoice draft < open < uncollectible < paid | void; a payment intent
    requires_* < processing < requires_capture < succeeded | canceled; a checkout session
    open < complete | expired, then unpaid < paid; a refund pending (or requires_action) <
    succeeded | failed | canceled; a dispute needs_response < under_review < closed; an
    invoice payment open < paid | canceled; a charge by its refunded amount, then captured,
    refunded, then pending < final; a subscription incomplete < any other status (no
    subscription returns to incomplete: a read that saw it incomplete never beats the
    same-second activation, issue 19 point 1). 0 for objects without a monotonic lifecycle."""
    if isinstance(obj, InvoiceView):
        return _INVOICE.get(obj.status or "", 0)
    if isinstance(obj, PaymentIntentView):
        return _PAYMENT_INTENT.get(obj.status or "", 0)  # requires_*: 0
    if isinstance(obj, CheckoutSessionView):
        paid = obj.payment_status in ("paid", "no_payment_required")
        return _SESSION.get(obj.status or "", 0) * 2 + paid
    if isinstance(obj, RefundView):
        return _REFUND.get(obj.status or "", 0)
    if isinstance(obj, DisputeView):
        return _DISPUTE.get(obj.status or "", 0)
    if isinstance(obj, InvoicePaymentView):
        return _INVOICE_PAYMENT.get(obj.status or "", 0)
    if isinstance(obj, SubscriptionView):
        return 0 if obj.status == "incomplete" else 1
    if isinstance(obj, ChargeView):
        refunded = max(obj.amount_refunded, 0)
        final = obj.status not in (None, "pending")
        return ((refunded * 2 + obj.captured) * 2 + obj.refunded) * 2 + final
    return 0
