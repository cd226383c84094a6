"""The webhook endpoint against a real uvicorn and a real Kafka topic."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from entitled.crypto import key_id_of
from entitled.keyring import Keyring
from entitled.settings import Settings
from ingest.app import KNOWN_TYPE_PREFIXES, create_app
from launcher.stripe import events as se
from projections.model.rules import RULES
from tests.support.kafka import end_offsets, read_topic
from tests.support.keys import MASTER_KEY
from tests.support.polling import async_wait_until
from tests.support.serve import Running, running

SECRET = "whsec_test_secret"


def _subscription_event(customer: str = "cus_webhook") -> dict[str, Any]:
    sub = se.subscription(customer=customer, items=[("price_a", "prod_a")])
    return se.event("customer.subscription.created", sub, account="acct_connect1")


def _signed(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    return {
        "Stripe-Signature": se.sign_header(body, secret, timestamp),
        "Content-Type": "application/json",
    }


async def test_signed_event_is_written_byte_for_byte(ingest_server: Running) -> None:
    evt = _subscription_event()
    # Unusual spacing and key order must survive: the log keeps the bytes, not a re-encoding.
    body = b'{ "zz": 1,\n' + se.encode(evt)[1:]
    before = time.time()
    async with httpx.AsyncClient(base_url=ingest_server.url) as client:
        response = await client.post("/webhooks/stripe", content=body, headers=_signed(body))
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "id": evt["id"]}

    settings = ingest_server.settings
    (sealed,) = await read_topic(settings, opened=False)
    assert b"cus_webhook" not in sealed.value  # sealed with the customer's data key
    records = await read_topic(settings)
    assert len(records) == 1
    record = records[0]
    assert record.value == body  # byte for byte once opened
    assert record.key == b"cus_webhook"
    headers = dict(record.headers)
    assert headers["stripe-event-id"] == evt["id"].encode()
    assert headers["stripe-event-type"] == b"customer.subscription.created"
    assert headers["stripe-api-version"] == se.CURRENT_API_VERSION.encode()
    assert headers["stripe-account"] == b"acct_connect1"
    assert headers["source"] == b"webhook"
    assert before - 1 <= float(headers["received-at"]) <= time.time() + 1


async def test_same_customer_same_partition(ingest_server: Running) -> None:
    async with httpx.AsyncClient(base_url=ingest_server.url) as client:
        for _ in range(5):
            body = se.encode(_subscription_event("cus_samepart"))
            r = await client.post("/webhooks/stripe", content=body, headers=_signed(body))
            assert r.status_code == 200
    settings = ingest_server.settings
    records = await read_topic(settings)
    assert len(records) == 5
    assert len({r.partition for r in records}) == 1


async def test_a_late_webhook_about_a_forgotten_customer_is_logged_unreadable(
    ingest_server: Running,
) -> None:
    """Forgotten at T, the customer's webhooks Stripe created before T (a retry arriving
    after the forget) are logged (200) sealed with a key that exists nowhere; one created
    after T starts a new key, readable."""
    settings = ingest_server.settings
    sub = se.subscription(customer="cus_late", items=[("price_a", "prod_a")])

    async def post(created: int) -> ConsumerRecord[bytes, bytes]:
        body = se.encode(se.event("customer.subscription.updated", sub, created=created))
        async with httpx.AsyncClient(base_url=ingest_server.url) as client:
            r = await client.post("/webhooks/stripe", content=body, headers=_signed(body))
        assert r.status_code == 200, r.text
        return (await read_topic(settings, opened=False))[-1]

    first = await post(int(time.time()))
    async with Keyring(settings) as other:
        await other.forget(["cus_late"])

    fresh: list[int] = []

    async def new_key() -> bool:  # ingest has followed the keys topic past the forget
        later = await post(int(time.time()) + 5)
        fresh.append(later.offset)
        return key_id_of(later.headers) != key_id_of(first.headers)

    await async_wait_until(new_key, 20, "ingest read the forget")
    before = await post(int(time.time()) - 600)
    opened = {r.offset: r.value for r in await read_topic(settings)}
    assert opened[first.offset] == b""  # forgotten
    assert b"cus_late" in opened[fresh[-1]]  # created after the forget: a new key
    assert opened[before.offset] == b""  # created before it: unreadable from the start


def _signed_but_malformed() -> list[tuple[str, bytes]]:
    """(case, body) of signed bodies that are not well-formed events: logged, answered 200
    (issue 19, point 10; the fold parks them, see test_app_signed_bodies)."""

    def evt_without(*path: str) -> dict[str, Any]:
        evt = _subscription_event()
        target = evt
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]
        return evt

    return [
        ("not json", b"hello"),
        ("array", orjson.dumps([1, 2])),
        ("string", orjson.dumps("evt")),
        ("no id", orjson.dumps(evt_without("id"))),
        ("id not string", orjson.dumps({**_subscription_event(), "id": 5})),
        ("no type", orjson.dumps(evt_without("type"))),
        ("type not string", orjson.dumps({**_subscription_event(), "type": ["a"]})),
        ("no data", orjson.dumps(evt_without("data"))),
        ("no data.object", orjson.dumps(evt_without("data", "object"))),
        ("data.object string", orjson.dumps({**_subscription_event(), "data": {"object": "x"}})),
    ]


def _bad_inputs(limit: int) -> list[tuple[str, bytes, dict[str, str], int, str]]:
    """(case, body, headers, expected status, expected words in the error)."""
    good = se.encode(_subscription_event())
    now = int(time.time())

    tampered = good.replace(b"cus_webhook", b"cus_attacker")
    v0 = se.sign_header(good, SECRET).replace("v1=", "v0=")
    big = b'{"pad": "' + b"x" * limit + b'"}'
    cases: list[tuple[str, bytes, dict[str, str], int, str]] = [
        ("no signature", good, {}, 400, "missing"),
        ("garbled signature", good, {"Stripe-Signature": "t=abc,v1=zz"}, 400, "garbled"),
        ("garbage header", good, {"Stripe-Signature": "hello"}, 400, "garbled"),
        ("v0 only", good, {"Stripe-Signature": v0}, 400, "v1"),
        ("wrong secret", good, _signed(good, "whsec_other"), 400, "does not match"),
        ("stale", good, _signed(good, timestamp=now - 301), 400, "older"),
        ("tampered", tampered, _signed(good), 400, "does not match"),
        # The library verifies signatures over text: a body that is not UTF-8 cannot be shown
        # to be Stripe's, so it is refused before the signature.
        ("invalid utf-8", b'{"a": "\xff"}', _signed(b'{"a": "\xff"}'), 400, "UTF-8"),
        ("too large", big, _signed(big), 413, "limit"),
    ]
    return cases


async def test_bad_input_gets_4xx_and_writes_nothing(small_settings: Settings) -> None:
    async with running(small_settings) as server, httpx.AsyncClient(base_url=server.url) as client:
        wrong = []
        for case, body, headers, status, words in _bad_inputs(small_settings.max_body_bytes):
            r = await client.post("/webhooks/stripe", content=body, headers=headers)
            error = (
                r.json().get("error", "")
                if r.headers.get("content-type", "").startswith("application/json")
                else ""
            )
            if r.status_code != status or words not in error or SECRET in r.text:
                wrong.append((case, r.status_code, r.text))
        assert wrong == []
        assert sum((await end_offsets(small_settings)).values()) == 0

        # The offsets check can fail: a good event does move them.
        good = se.encode(_subscription_event())
        r = await client.post("/webhooks/stripe", content=good, headers=_signed(good))
        assert r.status_code == 200
        assert sum((await end_offsets(small_settings)).values()) == 1

        # Signed bodies are never refused for their content: each is logged as received.
        malformed = _signed_but_malformed()
        for _case, body in malformed:
            r = await client.post("/webhooks/stripe", content=body, headers=_signed(body))
            assert r.status_code == 200, (_case, r.text)
        records = await read_topic(small_settings)
        assert sorted(r.value for r in records) == sorted([good, *(b for _, b in malformed)])


async def test_oversized_stream_without_length_is_cut_off(small_settings: Settings) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):  # 64 MiB if nobody stops us
            sent += 65536
            yield b"x" * 65536

    async with running(small_settings) as server, httpx.AsyncClient(base_url=server.url) as client:
        headers = {"Stripe-Signature": "t=1,v1=00"}
        r = await client.post("/webhooks/stripe", content=chunks(), headers=headers)
        assert r.status_code == 413
        assert "limit" in r.json()["error"]
    assert sent < 64 * 1024 * 1024
    ends = await end_offsets(small_settings)
    assert sum(ends.values()) == 0


async def test_unknown_event_type_is_accepted(
    ingest_server: Running, caplog: pytest.LogCaptureFixture
) -> None:
    evt = se.event("radar.early_fraud_warning.created", {"id": "issfr_1", "object": "x"})
    # folded types are not "unhandled" (issue 19, point 11)
    folded = [
        se.event("refund.created", {"id": "re_1", "object": "refund"}),
        se.event("invoice_payment.paid", {"id": "inpay_1", "object": "invoice_payment"}),
    ]
    caplog.set_level(logging.INFO, logger="ingest.app")
    async with httpx.AsyncClient(base_url=ingest_server.url) as client:
        for e in (evt, *folded):
            body = se.encode(e)
            r = await client.post("/webhooks/stripe", content=body, headers=_signed(body))
            assert r.status_code == 200
            assert r.json()["id"] == e["id"]
    unhandled = [r.getMessage() for r in caplog.records if "unhandled type" in r.getMessage()]
    assert unhandled == [f"accepted event {evt['id']} of unhandled type {evt['type']}"]


def test_every_folded_type_is_named_handled() -> None:
    folded = [t for t in RULES if not t.startswith(KNOWN_TYPE_PREFIXES)]
    assert folded == []


async def test_rotation_accepts_either_secret(settings: Settings) -> None:
    rotating = replace(settings, webhook_secrets=("whsec_old_one", "whsec_new_one"))
    async with running(rotating) as server, httpx.AsyncClient(base_url=server.url) as client:
        statuses = {}
        for secret in ("whsec_old_one", "whsec_new_one", "whsec_third"):
            body = se.encode(_subscription_event())
            r = await client.post("/webhooks/stripe", content=body, headers=_signed(body, secret))
            statuses[secret] = r.status_code
            assert "whsec_" not in r.text
        # Stripe itself sends one v1 per active secret during its own rotation.
        body = se.encode(_subscription_event())
        both = (
            se.sign_header(body, "whsec_unknown")
            + ","
            + se.sign_header(body, "whsec_new_one").split(",")[1]
        )
        r = await client.post("/webhooks/stripe", content=body, headers={"Stripe-Signature": both})
        statuses["two signatures"] = r.status_code
    assert statuses == {
        "whsec_old_one": 200,
        "whsec_new_one": 200,
        "whsec_third": 400,
        "two signatures": 200,
    }


async def test_health_ready_and_metrics(ingest_server: Running) -> None:
    async with httpx.AsyncClient(base_url=ingest_server.url) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        # the webhook is served ahead of the router (ingest.app._WebhookLane): the route's
        # other methods still answer as Starlette's route does
        assert (await client.get("/webhooks/stripe")).status_code == 405
        body = se.encode(_subscription_event())
        assert (
            await client.post("/webhooks/stripe", content=body, headers=_signed(body))
        ).status_code == 200
        r = await client.post("/webhooks/stripe", content=body, headers=_signed(body, "whsec_x"))
        assert r.status_code == 400
        metrics = (await client.get("/metrics")).text
    assert 'entitled_ingest_requests_total{outcome="accepted"} 1.0' in metrics
    assert 'entitled_ingest_requests_total{outcome="bad_signature"} 1.0' in metrics
    assert "entitled_ingest_produce_seconds_count 1.0" in metrics
    assert f"entitled_ingest_bytes_total {float(len(body))}" in metrics


def test_app_is_built_outside_an_event_loop() -> None:
    # `entitled ingest` builds the app before uvicorn starts the loop; aiokafka objects
    # must therefore only be created in the lifespan.
    app = create_app(
        Settings(
            kafka_bootstrap_servers="127.0.0.1:9", webhook_secrets=(SECRET,), master_key=MASTER_KEY
        )
    )
    assert asyncio.run(app.state.producer.ready()) is False
