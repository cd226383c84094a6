"""Stripe's example objects (`stripe_fixtures/fixtures3.json`, Stripe's OpenAPI examples) as
templates, fresh ids, and the catalogue objects (products, prices, plans) that the event
builders of `launcher.stripe.events` and `launcher.stripe.payments` embed."""

from __future__ import annotations

import functools
import json
import secrets
import string
import time
from collections.abc import Mapping
from importlib import resources
from typing import Any

import orjson

Obj = dict[str, Any]
_ALPHABET = string.ascii_letters + string.digits


@functools.cache
def fixture_objects() -> Mapping[str, Obj]:
    text = resources.files("launcher").joinpath("stripe_fixtures/fixtures3.json").read_text()
    loaded: Mapping[str, Obj] = json.loads(text)["resources"]
    return loaded


def template(name: str) -> Obj:
    obj: Obj = copy_json(fixture_objects()[name])
    return obj


def copy_json(obj: Obj) -> Obj:
    # A JSON round trip is a deep copy of JSON data, about ten times faster than deepcopy
    # (the benchmarks generate a million events).
    copied: Obj = orjson.loads(orjson.dumps(obj))
    return copied


def fresh(kind: str, id: str, created: int | None, /, **fields: Any) -> Obj:
    """Stripe's example object `kind` with `id`, `created` (now when None) and `fields` set."""
    obj = template(kind)
    obj.update(id=id, created=now() if created is None else created, **fields)
    return obj


def new_id(prefix: str) -> str:
    """A fresh Stripe-looking id such as `cus_Qx1...` (24 random characters)."""
    raw = int.from_bytes(secrets.token_bytes(18), "big")
    chars = []
    for _ in range(24):
        raw, digit = divmod(raw, len(_ALPHABET))
        chars.append(_ALPHABET[digit])
    return prefix + "_" + "".join(chars)


def now() -> int:
    return int(time.time())


def product(
    id: str | None = None,
    *,
    groups: str | None = None,
    movie_id: str | None = None,
    name: str = "WebFlicks package",
    active: bool = True,
    created: int | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Obj:
    """A product; `groups` goes to metadata `subscription_group`, `movie_id` to `movie_id`."""
    obj = template("product")
    ts = now() if created is None else created
    meta = dict(metadata or {})
    if groups is not None:
        meta["subscription_group"] = groups
    if movie_id is not None:
        meta["movie_id"] = movie_id
    obj.update(
        id=id or new_id("prod"),
        name=name,
        active=active,
        created=ts,
        updated=ts,
        metadata=meta,
        default_price=None,
        description=None,
        package_dimensions=None,
        type="service",
    )
    return obj


def price(
    id: str | None = None,
    *,
    product: str,
    recurring: bool = True,
    unit_amount: int = 999,
    created: int | None = None,
    active: bool = True,
) -> Obj:
    obj = fresh(
        "price",
        id or new_id("price"),
        created,
        product=product,
        active=active,
        unit_amount_decimal=str(unit_amount),
        unit_amount=unit_amount,
        transform_quantity=None,
        custom_unit_amount=None,
    )
    if not recurring:
        obj.update(recurring=None, type="one_time")
    return obj


def price_object(price_id: str, product_id: str, created: int) -> Obj:
    return price(price_id, product=product_id, created=created)


def plan_object(price_id: str, product_id: str, created: int) -> Obj:
    # The pre-2025 `plan` on an item: the price seen through the older Plans API.
    plan = template("plan")
    plan.update(
        id=price_id,
        product=product_id,
        created=created,
        amount=999,
        amount_decimal="999",
        billing_scheme="per_unit",
        currency="usd",
        interval_count=1,
        livemode=False,
        metadata={},
        tiers_mode=None,
        transform_usage=None,
    )
    return plan
