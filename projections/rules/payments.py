"""One-off payments: checkout sessions, payment intents, invoices (purchases), charges, refunds.

Paid means: a checkout session in mode payment with payment_status "paid"; a payment intent
with status "succeeded"; an invoice with status "paid".
"""

from __future__ import annotations

from projections.events import (
    ChargeView,
    CheckoutSessionView,
    InvoiceView,
    PaymentIntentView,
    RefundView,
    StripeEvent,
)
from projections.rows import ChargeRow, PurchaseRow, RefundRow
from projections.rules._registry import fold, stamp_of, view


@fold(
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
    table="purchases",
)
def checkout_session_snapshot(event: StripeEvent, current: PurchaseRow | None) -> PurchaseRow:
    cs = view(event, CheckoutSessionView)
    return PurchaseRow(
        id=cs.id,
        customer=cs.customer,
        kind="checkout_session",
        paid=cs.mode == "payment" and cs.payment_status == "paid",
        amount=cs.amount_total,
        metadata=cs.metadata,
        product_ids=(),  # line items are not in the webhook; the movie is in the metadata
        payment_intent=cs.payment_intent,
        stamp=stamp_of(event),
        event_id=event.id,
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
    return PurchaseRow(
        id=pi.id,
        customer=pi.customer,
        kind="payment_intent",
        paid=pi.status == "succeeded",
        amount=pi.amount,
        metadata=pi.metadata,
        product_ids=(),
        payment_intent=pi.id,
        stamp=stamp_of(event),
        event_id=event.id,
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
    return PurchaseRow(
        id=inv.id,
        customer=inv.customer,
        kind="invoice",
        paid=inv.status == "paid",
        amount=inv.amount_paid,
        metadata=inv.metadata,
        product_ids=tuple(sorted({ln.product for ln in inv.lines if ln.product})),
        payment_intent=inv.payment_intent,
        stamp=stamp_of(event),
        event_id=event.id,
    )


@fold(
    "charge.succeeded",
    "charge.captured",
    "charge.refunded",
    "charge.updated",
    "charge.failed",
    table="charges",
)
def charge_snapshot(event: StripeEvent, current: ChargeRow | None) -> ChargeRow:
    ch = view(event, ChargeView)
    return ChargeRow(
        id=ch.id,
        customer=ch.customer,
        payment_intent=ch.payment_intent,
        amount=ch.amount,
        amount_refunded=ch.amount_refunded,
        refunded=ch.refunded,
        stamp=stamp_of(event),
        event_id=event.id,
    )


@fold(
    "charge.refund.updated",
    "refund.created",
    "refund.updated",
    "refund.failed",
    table="refunds",
)
def refund_snapshot(event: StripeEvent, current: RefundRow | None) -> RefundRow:
    re = view(event, RefundView)
    return RefundRow(
        id=re.id,
        charge=re.charge,
        payment_intent=re.payment_intent,
        amount=re.amount,
        status=re.status,
        stamp=stamp_of(event),
        event_id=event.id,
        customer=re.customer,
    )
