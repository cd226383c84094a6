"""Which events the hydrator completes and how it reads them (pure, no network)."""

from __future__ import annotations

from typing import Any

import pytest

from ingest.completion import fetch_for_id, needed
from ingest.snapshots import event_type_of, hydrate_id, read_event
from launcher.stripe import events as se
from tests.ingest.thin_events import notification


def test_thin_notification_of_a_v1_resource_fetches_the_related_object() -> None:
    fetch = needed(notification("v1.customer.subscription.updated", "sub_1", "subscription"))
    assert fetch is not None
    assert (fetch.path, fetch.object_id, fetch.reason, dict(fetch.params)) == (
        "/v1/subscriptions/sub_1",
        "sub_1",
        "thin",
        {},
    )
    session = needed(notification("v1.checkout.session.completed", "cs_1", "checkout.session"))
    assert session is not None and session.params == {"expand": ["line_items"]}


@pytest.mark.parametrize(
    "change",
    [
        {"type": "v2.core.account.updated"},  # v2 resources: logged, not fetched
        {"related_object": {"id": "txi_1", "type": "tax_id", "url": "/v1/tax_ids/txi_1"}},
        {"related_object": {"id": "sub_1", "type": "subscription", "url": "https://evil/x"}},
        {"related_object": {"id": "sub_1/../x", "type": "subscription", "url": "/v1/x"}},
    ],
)
def test_notifications_not_fetched(change: dict[str, Any]) -> None:
    thin = {**notification("v1.customer.updated", "sub_1", "subscription"), **change}
    assert needed(thin) is None


def test_checkout_session_without_line_items_is_completed_once_only() -> None:
    session = se.checkout_session("cs_a", customer="cus_a")
    fetch = needed(se.event("checkout.session.completed", session))
    assert fetch is not None and fetch.reason == "line_items"
    assert fetch.path == "/v1/checkout/sessions/cs_a"
    whole = {**session, "line_items": {"object": "list", "data": []}}
    assert needed(se.event("checkout.session.completed", whole)) is None
    assert needed(se.event("checkout.session.expired", session)) is None


def test_paid_invoice_without_payments_is_completed() -> None:
    invoice = se.invoice("in_a", customer="cus_a", lines=[("price_m", "prod_m")])
    bare = {k: v for k, v in invoice.items() if k not in ("payments", "payment_intent")}
    fetch = needed(se.event("invoice.paid", bare))
    assert fetch is not None and fetch.params == {"expand": ["payments"]}
    assert needed(se.event("invoice.paid", {**bare, "payment_intent": "pi_1"})) is None
    assert needed(se.event("invoice.paid", {**bare, "amount_paid": 0})) is None
    assert needed(se.event("invoice.finalized", bare)) is None


def test_refresh_reads_by_id_prefix() -> None:
    fetch = fetch_for_id("in_123")
    assert fetch is not None and fetch.path == "/v1/invoices/in_123"
    assert fetch.params == {"expand": ["payments"]}
    inpay = fetch_for_id("inpay_1")
    assert inpay is not None and inpay.path == "/v1/invoice_payments/inpay_1"
    assert fetch_for_id("cus_") is None
    assert fetch_for_id("cus_1/../../v1/x") is None
    assert fetch_for_id("acct_1") is None


def test_event_type_by_state_and_deleted_objects() -> None:
    assert event_type_of({"object": "subscription", "status": "canceled"}) == (
        "customer.subscription.deleted"
    )
    assert event_type_of({"object": "customer", "id": "cus_1", "deleted": True}) == (
        "customer.deleted"
    )
    assert event_type_of({"object": "dispute", "status": "lost"}) == "charge.dispute.closed"
    assert event_type_of({"object": "checkout.session", "status": "open"}) is None
    assert event_type_of({"object": "tax_id"}) is None


def test_read_event_falls_back_to_the_completed_event_type() -> None:
    open_session = {"object": "checkout.session", "id": "cs_1", "status": "open"}
    event_id = hydrate_id("evt_src", "cs_1")
    assert read_event(open_session, event_id=event_id, api_version=None, read_at=5) is None
    event = read_event(
        open_session,
        event_id=event_id,
        api_version="2026-10-28.endive",
        read_at=5,
        fallback_type="checkout.session.completed",
    )
    assert event is not None
    assert (event["id"], event["type"], event["created"]) == (
        event_id,
        "checkout.session.completed",
        5,
    )


def test_hydrate_id_depends_on_source_and_object_only() -> None:
    assert hydrate_id("evt_1", "sub_1") == hydrate_id("evt_1", "sub_1")
    assert hydrate_id("evt_1", "sub_1") != hydrate_id("evt_2", "sub_1")
    assert hydrate_id("evt_1", "sub_1") != hydrate_id("evt_1", "sub_2")
    assert hydrate_id("evt_1", "sub_1").startswith("evt_hydrate_")
