"""Builders of Stripe's payment objects for tests, demos and benches: checkout sessions,
payment intents, invoices (current and pre-2025 line shapes), charges and refunds. Re-exported
by `launcher.stripe.events`, where the module docstring shows how events are built from them."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from launcher.stripe import _objects
from launcher.stripe._objects import Obj, fresh, new_id, now, template

__all__ = ["charge", "checkout_session", "invoice", "payment_intent", "refund"]


def checkout_session(
    id: str | None = None,
    *,
    customer: str,
    movie_id: str | None = None,
    payment_status: str = "paid",
    mode: str = "payment",
    payment_intent: str | None = None,
    amount_total: int = 399,
    created: int | None = None,
    status: str | None = None,
) -> Obj:
    obj = template("checkout.session")
    cs_id = id or new_id("cs_test")
    ts = now() if created is None else created
    obj.update(
        id=cs_id,
        customer=customer,
        metadata={"movie_id": movie_id} if movie_id is not None else {},
        payment_status=payment_status,
        mode=mode,
        payment_intent=payment_intent if mode == "payment" else None,
        amount_total=amount_total,
        amount_subtotal=amount_total,
        currency="usd",
        created=ts,
        expires_at=ts + 86400,
        status=status or ("complete" if payment_status != "unpaid" else "open"),
        url=None,
        shipping_cost=None,
        currency_conversion=None,
    )
    return obj


def payment_intent(
    id: str | None = None,
    *,
    customer: str,
    movie_id: str | None = None,
    status: str = "succeeded",
    amount: int = 399,
    created: int | None = None,
    latest_charge: str | None = None,
) -> Obj:
    pi_id = id or new_id("pi")
    return fresh(
        "payment_intent",
        pi_id,
        created,
        customer=customer,
        metadata={"movie_id": movie_id} if movie_id is not None else {},
        status=status,
        amount=amount,
        amount_received=amount if status == "succeeded" else 0,
        canceled_at=None,
        client_secret=f"{pi_id}_secret_{secrets.token_hex(8)}",
        last_payment_error=None,
        next_action=None,
        processing=None,
        latest_charge=latest_charge,
        transfer_data=None,
    )


def invoice(
    id: str | None = None,
    *,
    customer: str,
    lines: Sequence[tuple[str, str]],
    subscription: str | None = None,
    payment_intent: str | None = None,
    status: str = "paid",
    amount_paid: int | None = None,
    legacy: bool = False,
    created: int | None = None,
) -> Obj:
    """An invoice with one line per `(price_id, product_id)`.

    Current shape: `line.pricing.price_details.{price, product}`,
    `parent.subscription_details.subscription`, the payment intent under `payments`.
    `legacy=True`: `line.price` / `line.plan`, `invoice.subscription`, `invoice.payment_intent`.
    """
    obj = template("invoice")
    in_id = id or new_id("in")
    ts = now() if created is None else created
    template_line = obj["lines"]["data"][0]
    data = []
    total = 0
    for price_id, product_id in lines:
        line = _objects.copy_json(template_line)
        line.update(id=new_id("il"), invoice=in_id, amount=999, subtotal=999)
        line["period"] = {"start": ts, "end": ts}
        if legacy:
            del line["pricing"], line["parent"]
            line.update(
                price=_objects.price_object(price_id, product_id, ts),
                plan=_objects.plan_object(price_id, product_id, ts) if subscription else None,
                subscription=subscription,
                type="subscription" if subscription else "invoiceitem",
            )
        else:
            line["pricing"] = {
                "type": "price_details",
                "price_details": {"price": price_id, "product": product_id},
                "unit_amount_decimal": "999",
            }
            line["parent"] = (
                {
                    "type": "subscription_item_details",
                    "subscription_item_details": {
                        "invoice_item": None,
                        "proration": False,
                        "proration_details": {"credited_items": None},
                        "subscription": subscription,
                        "subscription_item": new_id("si"),
                    },
                }
                if subscription
                else {
                    "type": "invoice_item_details",
                    "invoice_item_details": {
                        "invoice_item": new_id("ii"),
                        "proration": False,
                        "proration_details": {"credited_items": None},
                        "subscription": None,
                    },
                }
            )
        data.append(line)
        total += 999
    obj["lines"].update(data=data, url=f"/v1/invoices/{in_id}/lines")
    paid = amount_paid if amount_paid is not None else (total if status == "paid" else 0)
    obj.update(
        id=in_id,
        customer=customer,
        status=status,
        created=ts,
        amount_due=total,
        amount_paid=paid,
        amount_remaining=total - paid,
        subtotal=total,
        total=total,
        billing_reason="subscription_cycle" if subscription else "manual",
        last_finalization_error=None,
        from_invoice=None,
        shipping_cost=None,
        amount_overpaid=0,
    )
    if legacy:
        del obj["parent"]
        obj.update(subscription=subscription, payment_intent=payment_intent)
    else:
        obj["parent"] = (
            {
                "type": "subscription_details",
                "subscription_details": {"metadata": {}, "subscription": subscription},
                "quote_details": None,
            }
            if subscription
            else None
        )
        obj.pop("subscription", None)
        if payment_intent is not None:
            obj["payments"] = {
                "object": "list",
                "data": [
                    {
                        "object": "invoice_payment",
                        "id": new_id("inpay"),
                        "invoice": in_id,
                        "is_default": True,
                        "status": "paid" if status == "paid" else "open",
                        "payment": {"type": "payment_intent", "payment_intent": payment_intent},
                    }
                ],
                "has_more": False,
                "url": f"/v1/invoice_payments?invoice={in_id}",
            }
    return obj


def charge(
    id: str | None = None,
    *,
    customer: str,
    payment_intent: str,
    amount: int = 399,
    amount_refunded: int = 0,
    refunded: bool = False,
    created: int | None = None,
) -> Obj:
    ch_id = id or new_id("ch")
    obj = fresh(
        "charge",
        ch_id,
        created,
        customer=customer,
        payment_intent=payment_intent,
        amount=amount,
        amount_captured=amount,
        captured=True,
        amount_refunded=amount_refunded,
        refunded=refunded,
        source=None,
        transfer_data=None,
        receipt_url=None,
    )
    obj["refunds"]["url"] = f"/v1/charges/{ch_id}/refunds"
    return obj


def refund(
    id: str | None = None,
    *,
    charge: str,
    payment_intent: str,
    amount: int,
    status: str = "succeeded",
    created: int | None = None,
    customer: str | None = None,
) -> Obj:
    """A refund; Stripe leaves `customer` null on most refunds, so it is optional here too."""
    return fresh(
        "refund",
        id or new_id("re"),
        created,
        charge=charge,
        payment_intent=payment_intent,
        amount=amount,
        status=status,
        customer=customer,
    )
