"""The event factory builds what Stripe sends, signed as Stripe signs."""

from __future__ import annotations

import json
import time

import pytest
import stripe

from launcher.stripe import events as se

SECRET = "whsec_test_secret"


def test_signed_payload_is_accepted_by_the_stripe_library() -> None:
    body = se.encode(se.event("customer.created", se.customer("cus_1", email="a@b.c")))
    header = se.sign_header(body, SECRET)
    evt = stripe.Webhook.construct_event(body, header, SECRET)
    assert evt["id"].startswith("evt_")
    assert evt["type"] == "customer.created"
    assert evt["data"]["object"]["email"] == "a@b.c"


def test_wrong_secret_and_stale_timestamp_are_rejected() -> None:
    body = se.encode(se.event("customer.created", se.customer()))
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, se.sign_header(body, "whsec_other"), SECRET)
    stale = se.sign_header(body, SECRET, timestamp=int(time.time()) - 3600)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, stale, SECRET)


def test_envelope_shape() -> None:
    obj = se.product("prod_1", groups="action")
    evt = se.event("product.created", obj, created=1700000000, account="acct_1")
    assert evt["object"] == "event"
    assert evt["api_version"] == se.CURRENT_API_VERSION
    assert evt["created"] == 1700000000
    assert evt["livemode"] is False
    assert evt["account"] == "acct_1"
    assert evt["data"]["object"] == obj
    assert evt["data"]["object"] is not obj
    assert "previous_attributes" not in evt["data"]
    assert set(evt["request"]) == {"id", "idempotency_key"}
    assert se.event("product.created", obj)["id"] != se.event("product.created", obj)["id"]
    assert json.loads(se.encode(evt)) == evt
    assert b" " not in se.encode({"a": [1, 2]})


def test_product_and_price() -> None:
    p = se.product("prod_1", groups="action, animated", movie_id="7", active=False)
    assert p["metadata"] == {"subscription_group": "action, animated", "movie_id": "7"}
    assert p["active"] is False and p["object"] == "product"
    pr = se.price("price_1", product="prod_1", recurring=False, unit_amount=399)
    assert pr["product"] == "prod_1" and pr["recurring"] is None and pr["unit_amount"] == 399
    assert se.product()["id"] != se.product()["id"]


def test_subscription_current_shape() -> None:
    s = se.subscription(
        "sub_1", customer="cus_1", items=[("price_a", "prod_a")], period_start=10, period_end=20
    )
    assert s["customer"] == "cus_1" and s["status"] == "active"
    assert "current_period_start" not in s
    (item,) = s["items"]["data"]
    assert item["price"]["id"] == "price_a" and item["price"]["product"] == "prod_a"
    assert (item["current_period_start"], item["current_period_end"]) == (10, 20)
    assert "plan" not in item


def test_subscription_legacy_shape() -> None:
    s = se.subscription(
        "sub_1", customer="cus_1", items=[("price_a", "prod_a")], legacy=True, period_start=10
    )
    assert s["current_period_start"] == 10
    (item,) = s["items"]["data"]
    assert item["plan"]["id"] == "price_a" and item["plan"]["product"] == "prod_a"
    assert "price" not in item and "current_period_start" not in item


_INVOICE = {
    "customer": "cus_1",
    "lines": [("price_a", "prod_a")],
    "subscription": "sub_1",
    "payment_intent": "pi_1",
}


def test_invoice_shapes() -> None:
    cur = se.invoice("in_1", **_INVOICE)
    assert cur["parent"]["subscription_details"]["subscription"] == "sub_1"
    assert "subscription" not in cur and "payment_intent" not in cur
    line = cur["lines"]["data"][0]
    assert line["pricing"]["price_details"] == {"price": "price_a", "product": "prod_a"}
    assert cur["payments"]["data"][0]["payment"]["payment_intent"] == "pi_1"
    assert cur["amount_paid"] == 999 and cur["status"] == "paid"
    old = se.invoice("in_2", **_INVOICE, legacy=True)
    assert old["subscription"] == "sub_1" and old["payment_intent"] == "pi_1"
    assert "parent" not in old
    line = old["lines"]["data"][0]
    assert line["price"]["id"] == "price_a" and line["plan"]["product"] == "prod_a"
    assert "pricing" not in line


def test_payments() -> None:
    cs = se.checkout_session("cs_1", customer="cus_1", movie_id="9", payment_intent="pi_1")
    assert cs["metadata"] == {"movie_id": "9"} and cs["payment_status"] == "paid"
    assert cs["payment_intent"] == "pi_1" and cs["amount_total"] == 399
    pi = se.payment_intent("pi_1", customer="cus_1", movie_id="9", status="processing")
    assert pi["status"] == "processing" and pi["metadata"]["movie_id"] == "9"
    ch = se.charge(
        "ch_1", customer="cus_1", payment_intent="pi_1", refunded=True, amount_refunded=399
    )
    assert ch["refunded"] is True and ch["payment_intent"] == "pi_1"
    re = se.refund("re_1", charge="ch_1", payment_intent="pi_1", amount=100)
    assert re["amount"] == 100 and re["status"] == "succeeded" and re["charge"] == "ch_1"
