"""Events whose free text is hostile, in every field a customer or merchant can fill in on
every object type the fold reads.

One `Kind` of hostile text per customer: that customer gets a product and price, a customer
object, a subscription, a checkout session, a payment intent, an invoice, a charge and a
refund, each carrying the kind's text in all its free-text fields and metadata (keys and
values). The 100 KB kind fills only a few fields per object so that each body stays under
the ingest's 1 MiB limit. The deep kind nests a 300-level object in a field Stripe may add
one day and a 100-level one in a list of objects (where an API object holds objects).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from launcher.stripe import events as se

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    name: str
    text: str
    long: bool = False  # only a few fields (body size)
    deep: bool = False  # plus a deeply nested object
    # JSON escapes of lone surrogates are valid JSON but no Unicode text: Stripe cannot
    # send them (its input is UTF-8), so the ingest may refuse them with 400.
    may_be_refused: bool = False


KINDS: Sequence[Kind] = (
    Kind("backslash_u0000", "Jos\\u0000e \\u0000"),  # the six characters, not U+0000
    Kind("nul", "Jos\x00e \x00end"),
    Kind("escapes", 'back\\\\slash \\" quote \\n newline \\t \\u00e9 \\'),
    Kind("quotes", "O'Brien \"quoted\" \n\r\t line' -- ;"),
    Kind("bidi", "\u202eevil\u202c \u200f\u2066rtl\u2069 \u2028\u2029 \ufeff"),
    Kind("surrogate", "half \ud800 pair \udfff", may_be_refused=True),
    Kind("long", "A" * 100_000, long=True),
    Kind("sql", "'); DROP TABLE customers; -- %s %(x)s {0} $1 \\x00"),
    Kind("json", '{"id": "cus_other", "metadata": {"a": 1}} ] } null'),
    Kind("emoji", "😀 \U0010fffd \uffff \u0085 \x7f \x1b[31m"),
    Kind("deep", "plain text", deep=True),
)

# Free-text paths per object type (`[]` is every element of a list; missing objects and
# lists are created). Metadata is handled apart (keys and values).
TEXT_FIELDS: dict[str, Sequence[str]] = {
    "customer": (
        "name",
        "email",
        "description",
        "phone",
        "address.line1",
        "address.line2",
        "address.city",
        "address.state",
        "address.postal_code",
        "shipping.name",
        "shipping.phone",
        "shipping.address.line1",
        "shipping.address.line2",
        "invoice_settings.footer",
        "invoice_settings.custom_fields[].name",
        "invoice_settings.custom_fields[].value",
        "invoice_prefix",
    ),
    "product": (
        "name",
        "description",
        "statement_descriptor",
        "unit_label",
        "url",
        "marketing_features[].name",
    ),
    "price": ("nickname", "lookup_key"),
    "subscription": ("description", "cancellation_details.comment"),
    "checkout.session": (
        "client_reference_id",
        "customer_email",
        "customer_details.name",
        "customer_details.email",
        "customer_details.phone",
        "customer_details.address.line1",
        "customer_details.address.line2",
        "customer_details.address.city",
        "collected_information.shipping_details.name",
        "collected_information.shipping_details.address.line1",
        "custom_fields[].key",
        "custom_fields[].label.custom",
        "custom_fields[].text.value",
        "custom_text.submit.message",
        "success_url",
    ),
    "payment_intent": (
        "description",
        "receipt_email",
        "statement_descriptor",
        "statement_descriptor_suffix",
        "shipping.name",
        "shipping.phone",
        "shipping.address.line1",
        "shipping.carrier",
        "shipping.tracking_number",
    ),
    "invoice": (
        "description",
        "footer",
        "custom_fields[].name",
        "custom_fields[].value",
        "customer_name",
        "customer_email",
        "customer_phone",
        "customer_address.line1",
        "customer_address.line2",
        "customer_shipping.name",
        "customer_shipping.address.line1",
        "statement_descriptor",
        "account_name",
        "number",
        "lines.data[].description",
    ),
    "charge": (
        "description",
        "receipt_email",
        "statement_descriptor",
        "statement_descriptor_suffix",
        "calculated_statement_descriptor",
        "billing_details.name",
        "billing_details.email",
        "billing_details.phone",
        "billing_details.address.line1",
        "shipping.name",
        "shipping.address.line1",
        "failure_message",
    ),
    "refund": ("description",),
}
# where metadata lives besides the object's own `metadata`
NESTED_METADATA: dict[str, Sequence[str]] = {
    "subscription": ("items.data[]",),
    "invoice": ("lines.data[]",),
}
LONG_FIELDS = 3  # fields per object that get the 100 KB text


def _set(obj: Any, path: str, value: Any) -> None:
    head, _, rest = path.partition(".")
    if head.endswith("[]"):
        name = head[:-2]
        items = obj.get(name)
        if not isinstance(items, list) or not items:
            items = obj[name] = [{}]
        for item in items:
            _set(item, rest, value)
        return
    if not rest:
        obj[head] = value
        return
    child = obj.get(head)
    if not isinstance(child, dict):
        child = obj[head] = {}
    _set(child, rest, value)


def _metadata(existing: Any, kind: Kind) -> Obj:
    meta = dict(existing) if isinstance(existing, dict) else {}
    meta[("k " + kind.text)[:40]] = kind.text  # Stripe caps keys at 40 characters
    meta["note"] = kind.text
    meta["empty"] = ""
    return meta


def _nested(depth: int) -> Obj:
    node: Obj = {"leaf": "bottom"}
    for n in range(depth):
        node = {f"level{n}": node, "text": "x"}
    return node


def harden(obj: Obj, kind: Kind) -> Obj:
    """`obj` with the kind's text in every free-text field and its metadata."""
    fields = TEXT_FIELDS[obj["object"]]
    for path in fields[:LONG_FIELDS] if kind.long else fields:
        if path == "custom_fields[].key":
            _set(obj, path, "".join(c for c in kind.text if c.isalnum())[:200] or "key")
            continue
        _set(obj, path, kind.text)
    obj["metadata"] = _metadata(obj.get("metadata"), kind)
    for where in NESTED_METADATA.get(obj["object"], ()):
        items = obj
        for part in where.removesuffix("[]").split("."):
            items = items[part]
        for item in items:  # type: ignore[attr-defined]
            item["metadata"] = _metadata(item.get("metadata"), kind)
    if kind.deep:
        obj["x_future_field"] = _nested(300)
        _set(obj, "x_future_list[].nested", _nested(100))
    return obj


def customer_id(kind: Kind) -> str:
    return f"cus_hostile_{kind.name}"


def product_id(kind: Kind) -> str:
    return f"prod_hostile_{kind.name}"


def group(kind: Kind) -> str:
    return f"hostile-{kind.name}"


def movie(kind: Kind) -> str:
    return f"movie-{kind.name}"


def events(kind: Kind, created: int) -> list[Obj]:
    """The kind's events, all for `customer_id(kind)` (products and prices keyed by id)."""
    cus = customer_id(kind)
    prod_id, price_id = product_id(kind), f"price_hostile_{kind.name}"
    pi_id, ch_id = f"pi_hostile_{kind.name}", f"ch_hostile_{kind.name}"
    product = se.product(prod_id, groups=group(kind), created=created)
    product = harden(product, kind)
    # the grant itself must survive the hardening: hostile keys sit beside it
    product["metadata"]["subscription_group"] = group(kind)
    session = harden(
        se.checkout_session(
            customer=cus, movie_id=movie(kind), payment_intent=pi_id, created=created
        ),
        kind,
    )
    session["metadata"]["movie_id"] = movie(kind)
    objects = [
        ("product.created", product),
        ("price.created", harden(se.price(price_id, product=prod_id, created=created), kind)),
        ("customer.created", harden(se.customer(cus, created=created), kind)),
        (
            "customer.subscription.created",
            harden(
                se.subscription(customer=cus, items=[(price_id, prod_id)], created=created), kind
            ),
        ),
        ("checkout.session.completed", session),
        (
            "payment_intent.succeeded",
            harden(se.payment_intent(pi_id, customer=cus, created=created), kind),
        ),
        (
            "invoice.paid",
            harden(se.invoice(customer=cus, lines=[(price_id, prod_id)], created=created), kind),
        ),
        (
            "charge.succeeded",
            harden(se.charge(ch_id, customer=cus, payment_intent=pi_id, created=created), kind),
        ),
        (
            # a refund of another payment: it must not revoke anything checked here
            "refund.created",
            harden(
                se.refund(
                    charge=f"ch_other_{kind.name}",
                    payment_intent=f"pi_other_{kind.name}",
                    amount=1,
                    customer=cus,
                    created=created,
                ),
                kind,
            ),
        ),
    ]
    out = []
    for n, (event_type, obj) in enumerate(objects):
        # the factory copies through orjson, which refuses lone surrogates: wrap afterwards
        event = se.event(event_type, {}, created=created + n)
        event["data"]["object"] = obj
        out.append(event)
    return out


def encode(event: Obj) -> bytes:
    """JSON bytes as Stripe would send them: UTF-8, except that text no UTF-8 can hold
    (lone surrogates) goes out as `\\ud800` escapes."""
    try:
        return json.dumps(event, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(event, ensure_ascii=True).encode()
