"""One-off payments: checkout sessions, payment intents, invoices (purchases), the invoice
payments that link an invoice to its payment intent, charges and refunds.

Paid means: a checkout session in mode payment with payment_status "paid" or
"no_payment_required" (a 100% discount); a payment intent with status "succeeded"; an invoice
with status "paid".
"""

from __future__ import annotations

from projections.model.events import StripeEvent
from projections.model.rows import ChargeRow, InvoicePaymentRow, PurchaseRow, RefundRow
from projections.model.rules._registry import fold, row_of, view
from projections.model.views import (
    ChargeView,
    CheckoutSessionView,
    InvoicePaymentView,
    InvoiceView,
    PaymentIntentView,
    RefundView,
)


@fold(
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
    table="purchases",
)
def checkout_session_snapshot(event: StripeEvent, current: PurchaseRow | None) -> PurchaseRow:
    cs = view(event, CheckoutSessionView)
    # The webhook carries no line items (the movie is in the metadata); a hydrated snapshot
    # does, and then its products name what was bought too.
    return row_of(
        PurchaseRow,
        cs,
        event,
        kind="checkout_session",
        # a 100%-discount purchase is complete without a payment (issue 19, point 9)
        paid=cs.mode == "payment" and cs.payment_status in ("paid", "no_payment_required"),
        amount=cs.amount_total,
    )


@fold(
    "payment_intent.created",
    "payment_intent.processing",
    "payment_intent.requires_action",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "payment_intent.amount_capturable_updated",
    "payment_intent.partially_funded",
    table="purchases",
)
def payment_intent_snapshot(event: StripeEvent, current: PurchaseRow | None) -> PurchaseRow:
    pi = view(event, PaymentIntentView)
    return row_of(
        PurchaseRow,
        pi,
        event,
        kind="payment_intent",
        paid=pi.status == "succeeded",
        product_ids=(),
        payment_intent=pi.id,
    )


@fold(
    "invoice.created",
    "invoice.updated",
    "invoice.finalized",
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "invoice.voided",
    "invoice.marked_uncollectible",
    table="purchases",
)
def invoice_snapshot(event: StripeEvent, current: PurchaseRow | None) -> PurchaseRow:
    inv = view(event, InvoiceView)
    return row_of(
        PurchaseRow,
        inv,
        event,
        kind="invoice",
        paid=inv.status == "paid",
        amount=inv.amount_paid,
        product_ids=tuple(sorted({ln.product for ln in inv.lines if ln.product})),
    )


@fold("invoice_payment.paid", table="invoice_payments")
def invoice_payment_snapshot(
    event: StripeEvent, current: InvoicePaymentRow | None
) -> InvoicePaymentRow:
    return row_of(InvoicePaymentRow, view(event, InvoicePaymentView), event)


@fold(
    "charge.pending",
    "charge.succeeded",
    "charge.captured",
    "charge.refunded",
    "charge.updated",
    "charge.failed",
    "charge.expired",
    table="charges",
)
def charge_snapshot(event: StripeEvent, current: ChargeRow | None) -> ChargeRow:
    return row_of(ChargeRow, view(event, ChargeView), event)


@fold(
    "charge.refund.updated",
    "refund.created",
    "refund.updated",
    "refund.failed",
    table="refunds",
)
def refund_snapshot(event: StripeEvent, current: RefundRow | None) -> RefundRow:
    return row_of(RefundRow, view(event, RefundView), event)
