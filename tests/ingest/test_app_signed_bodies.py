"""A correctly signed body is never refused for its content (issue 19, point 10): ingest logs
it byte for byte and answers 200; the fold reads it tolerantly, or parks it with the reason.
Real uvicorn, real Kafka, and the real fold on real Postgres."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from entitled.settings import Settings
from launcher.stripe import events as se
from tests.support.db import active_schema, entitlements, query
from tests.support.infold import fold_log
from tests.support.kafka import read_topic
from tests.support.serve import running

SECRET = "whsec_test_secret"


def _signed(body: bytes) -> dict[str, str]:
    return {"Stripe-Signature": se.sign_header(body, SECRET), "Content-Type": "application/json"}


def _subscribed(customer: str, product: str) -> dict[str, Any]:
    sub = se.subscription(customer=customer, items=[("price_sb", product)])
    return se.event("customer.subscription.created", sub)


async def test_signed_bodies_are_logged_as_received_and_folded_or_parked(
    settings: Settings,
) -> None:
    product = se.event("product.created", se.product("prod_sb", groups="action"))
    # Valid JSON text that orjson refuses: a number out of double range, a lone surrogate.
    huge = se.encode(_subscribed("cus_huge", "prod_sb")).replace(
        b'"quantity":1', b'"quantity":1e400', 1
    )
    assert b"1e400" in huge
    lone = se.encode(_subscribed("cus_lone", "prod_sb"))[:-1] + b',"note":"half \\ud800 pair"}'
    deep = b'{"id":"evt_deep","type":"customer.updated","data":' + b"[" * 100_000
    deep += b"]" * 100_000 + b"}"
    bodies: dict[str, bytes] = {
        "product": se.encode(product),
        "huge number": huge,
        "lone surrogate": lone,
        "deep nesting": deep,
        "not json": b"hello",
        "array": b"[1, 2]",
        "no id": orjson.dumps({**_subscribed("cus_noid", "prod_sb"), "id": None}),
    }
    unsigned = se.encode(_subscribed("cus_unsigned", "prod_sb"))
    assert settings.max_body_bytes > len(deep)

    async with running(settings) as server, httpx.AsyncClient(base_url=server.url) as client:
        answers = {
            case: await client.post("/webhooks/stripe", content=body, headers=_signed(body))
            for case, body in bodies.items()
        }
        refused = await client.post(
            "/webhooks/stripe", content=unsigned, headers={"Stripe-Signature": "t=1,v1=00"}
        )
        tampered = await client.post(
            "/webhooks/stripe",
            content=unsigned.replace(b"cus_unsigned", b"cus_attacker"),
            headers=_signed(unsigned),
        )
    assert {c: r.status_code for c, r in answers.items()} == dict.fromkeys(bodies, 200)
    assert answers["deep nesting"].json() == {"received": True, "id": None}
    assert answers["huge number"].json()["id"].startswith("evt_")
    assert (refused.status_code, tampered.status_code) == (400, 400)

    records = await read_topic(settings)
    assert sorted(r.value for r in records) == sorted(bodies.values())  # byte for byte
    by_body = {r.value: r for r in records}
    assert by_body[huge].key == b"cus_huge"
    assert by_body[lone].key == b"cus_lone"
    assert by_body[b"hello"].key.startswith(b"unreadable_")

    result = await fold_log(settings)
    held = entitlements(settings)
    # Read tolerantly: the huge quantity takes its default, the surrogate becomes U+FFFD.
    assert held["cus_huge"][0] == ["action"] and held["cus_lone"][0] == ["action"]
    # Parked with a reason where no reading is possible; nobody else held back.
    schema = active_schema(settings)
    reasons = [
        str(error)
        for (error,) in query(
            settings, f"SELECT error FROM {schema}.dead_letters WHERE state = 'poison'"
        )
    ]
    assert result.poison == len(reasons) == 4, reasons
    assert any("nested too deeply" in r for r in reasons), reasons
    assert any("not JSON" in r for r in reasons), reasons
