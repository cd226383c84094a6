from typing import Any

import pytest

from ingest.keys import event_headers, routing_key
from launcher.stripe import events as se


def _event(obj: dict[str, Any]) -> dict[str, Any]:
    return {"id": "evt_1", "type": "x.y", "data": {"object": obj}}


def test_customer_string_is_the_key() -> None:
    assert routing_key(_event({"id": "sub_1", "object": "subscription", "customer": "cus_1"})) == (
        "cus_1"
    )


def test_expanded_customer_object_gives_its_id() -> None:
    obj = {"id": "in_1", "object": "invoice", "customer": {"id": "cus_2", "object": "customer"}}
    assert routing_key(_event(obj)) == "cus_2"


def test_customer_object_is_keyed_by_its_own_id() -> None:
    assert routing_key(_event({"id": "cus_3", "object": "customer"})) == "cus_3"


@pytest.mark.parametrize("customer", [None, "", 7])
def test_no_customer_falls_back_to_the_object_id(customer: object) -> None:
    obj = {"id": "prod_1", "object": "product", "customer": customer}
    assert routing_key(_event(obj)) == "prod_1"


def test_no_object_id_falls_back_to_the_event_id() -> None:
    assert routing_key({"id": "evt_9", "type": "x", "data": {}}) == "evt_9"


def test_fixture_events_are_keyed_by_customer() -> None:
    sub = se.subscription("sub_k", customer="cus_k", items=[("price_a", "prod_a")])
    assert routing_key(se.event("customer.subscription.created", sub)) == "cus_k"
    assert routing_key(se.event("product.created", se.product("prod_k"))) == "prod_k"


def test_headers_name_the_event() -> None:
    evt = {"id": "evt_1", "type": "invoice.paid", "api_version": "2025-08-27.basil"}
    headers = dict(event_headers(evt, source="webhook", received_at=1700000000.1234))
    assert headers == {
        "stripe-event-id": b"evt_1",
        "stripe-event-type": b"invoice.paid",
        "stripe-api-version": b"2025-08-27.basil",
        "received-at": b"1700000000.123",
        "source": b"webhook",
    }


def test_connect_account_header_only_when_present() -> None:
    evt = {"id": "evt_1", "type": "t", "account": "acct_1"}
    names = [n for n, _ in event_headers(evt, source="backfill", received_at=0)]
    assert dict(event_headers(evt, source="backfill", received_at=0))["stripe-account"] == b"acct_1"
    assert names.count("stripe-account") == 1


def test_unknown_source_is_refused() -> None:
    with pytest.raises(ValueError):
        event_headers({"id": "e"}, source="api", received_at=0)


def test_thin_notification_keyed_by_its_related_object() -> None:
    thin = {
        "id": "evt_t1",
        "object": "v2.core.event",
        "type": "v1.invoice.paid",
        "related_object": {"id": "in_7", "type": "invoice", "url": "/v1/invoices/in_7"},
    }
    assert routing_key(thin) == "in_7"
    customer = {**thin, "related_object": {"id": "cus_7", "type": "customer", "url": "/v1/c"}}
    assert routing_key(customer) == "cus_7"
    assert routing_key({**thin, "related_object": None}) == "evt_t1"


def test_thin_notification_headers_take_the_account_from_context() -> None:
    thin = {"id": "evt_t2", "object": "v2.core.event", "type": "v1.charge.refunded"}
    headers = dict(event_headers({**thin, "context": "acct_9"}, source="webhook", received_at=0))
    assert headers["stripe-account"] == b"acct_9"
    assert headers["stripe-api-version"] == b""
    assert "stripe-account" not in dict(event_headers(thin, source="webhook", received_at=0))
    # `account` is a snapshot event's field: a notification's comes from `context` only
    with_account = {**thin, "account": "acct_x"}
    assert "stripe-account" not in dict(
        event_headers(with_account, source="hydrate", received_at=0)
    )
