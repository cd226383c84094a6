"""Upcasters: map older Stripe object shapes to the current one, so rules read one shape.

One small pure function per shape change, chained by `normalise`. Each decides by the shape
present (an old-version event may already carry some fields in the new shape, and a new
version may still carry an old field): it rewrites only the old-shape fields it finds. The
api_version only settles conflicts, where both shapes are present at once.

Functions copy what they change (shallowly, along the path they touch) and never mutate
their input: the parsed payload may be shared, and a copy of a whole invoice per event would
cost more than the parse on replay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "BASIL",
    "invoice_line_price_to_pricing",
    "invoice_payment_intent_to_payments",
    "invoice_subscription_to_parent",
    "is_older",
    "item_plan_to_price",
    "normalise",
    "subscription_periods_to_items",
]

Obj = dict[str, Any]
Upcaster = Callable[[Obj, "str | None"], Obj]

# The release that moved billing periods to items and invoice fields under `parent`/`pricing`.
BASIL = "2025-03-31.basil"


def is_older(api_version: str | None, than: str) -> bool:
    """True when `api_version` predates `than`; unknown (None) counts as older.

    Stripe versions start with an ISO date, so the date prefix orders them.
    """
    return api_version is None or api_version[:10] < than[:10]


def _items(obj: Obj) -> list[Obj] | None:
    """The items of a subscription: only the dicts (the views skip anything else too)."""
    items = obj.get("items")
    data = items.get("data") if isinstance(items, dict) else None
    return [i for i in data if isinstance(i, dict)] if isinstance(data, list) else None


def _with_items(obj: Obj, data: list[Obj]) -> Obj:
    out = dict(obj)
    out["items"] = {**obj["items"], "data": data}
    return out


def subscription_periods_to_items(obj: Obj, api_version: str | None) -> Obj:
    """`current_period_start/end` moved from the subscription to each item (basil).

    When an item already has its own period, it wins for basil and later (it is the real
    per-item value); before basil the subscription's period is the authoritative one.
    """
    if obj.get("object") != "subscription" or (
        "current_period_start" not in obj and "current_period_end" not in obj
    ):
        return obj
    start, end = obj.get("current_period_start"), obj.get("current_period_end")
    old = is_older(api_version, BASIL)
    out = {k: v for k, v in obj.items() if k not in ("current_period_start", "current_period_end")}
    data = _items(obj)
    if data is None:
        return out
    new_items = []
    for item in data:
        item = dict(item)
        if old or item.get("current_period_start") is None:
            item["current_period_start"] = start
        if old or item.get("current_period_end") is None:
            item["current_period_end"] = end
        new_items.append(item)
    return _with_items(out, new_items)


def item_plan_to_price(obj: Obj, api_version: str | None) -> Obj:
    """Subscription items: the legacy `plan` becomes `price` (a plan is a price seen through
    the Plans API, same id and product); an item that already has a `price` keeps it."""
    if obj.get("object") != "subscription":
        return obj
    data = _items(obj)
    if data is None or not any("plan" in item for item in data):
        return obj
    new_items = []
    for item in data:
        if "plan" in item:
            item = dict(item)
            plan = item.pop("plan")
            if not item.get("price") and plan:
                item["price"] = plan
        new_items.append(item)
    return _with_items(obj, new_items)


def invoice_subscription_to_parent(obj: Obj, api_version: str | None) -> Obj:
    """`invoice.subscription` moved to `invoice.parent.subscription_details.subscription`."""
    if obj.get("object") != "invoice" or "subscription" not in obj:
        return obj
    out = dict(obj)
    sub = out.pop("subscription")
    parent = out.get("parent")
    parent = parent if isinstance(parent, dict) else {}
    details = parent.get("subscription_details")
    has_parent_sub = isinstance(details, dict)
    if sub is not None and (not has_parent_sub or is_older(api_version, BASIL)):
        out["parent"] = {
            **parent,
            "type": "subscription_details",
            "subscription_details": {
                **(details if isinstance(details, dict) else {"metadata": None}),
                "subscription": sub,
            },
        }
    return out


def invoice_payment_intent_to_payments(obj: Obj, api_version: str | None) -> Obj:
    """`invoice.payment_intent` moved to `invoice.payments.data[].payment.payment_intent`."""
    if obj.get("object") != "invoice" or "payment_intent" not in obj:
        return obj
    out = dict(obj)
    pi = out.pop("payment_intent")
    if pi is None:
        return out
    if isinstance(pi, dict):  # expanded
        pi = pi.get("id")
    payments = out.get("payments")
    if not (isinstance(payments, dict) and payments.get("data")) or is_older(api_version, BASIL):
        out["payments"] = {
            "object": "list",
            "data": [
                {
                    "object": "invoice_payment",
                    "is_default": True,
                    "payment": {"type": "payment_intent", "payment_intent": pi},
                }
            ],
        }
    return out


def _line_pricing(line: Obj) -> Obj:
    price = line.get("price") or line.get("plan")
    out = {k: v for k, v in line.items() if k not in ("price", "plan")}
    pricing = line.get("pricing")
    if isinstance(pricing, dict) and isinstance(pricing.get("price_details"), dict):
        return out  # already in the new shape: it is the truth
    if isinstance(price, dict):
        price_id, product = price.get("id"), price.get("product")
        if isinstance(product, dict):  # expanded
            product = product.get("id")
    else:
        price_id, product = price, None
    if price_id is None:
        return out
    out["pricing"] = {
        **(pricing if isinstance(pricing, dict) else {}),
        "type": "price_details",
        "price_details": {"price": price_id, "product": product},
    }
    return out


def invoice_line_price_to_pricing(obj: Obj, api_version: str | None) -> Obj:
    """Invoice lines: `price` / `plan` became `pricing.price_details.{price, product}`."""
    if obj.get("object") != "invoice":
        return obj
    lines = obj.get("lines")
    data = lines.get("data") if isinstance(lines, dict) else None
    if not isinstance(data, list):
        return obj
    data = [ln for ln in data if isinstance(ln, dict)]
    if not any("price" in ln or "plan" in ln for ln in data):
        return obj
    out = dict(obj)
    out["lines"] = {**obj["lines"], "data": [_line_pricing(ln) for ln in data]}
    return out


# Applied in order; each is a no-op on objects it does not concern.
UPCASTERS: tuple[Upcaster, ...] = (
    subscription_periods_to_items,
    item_plan_to_price,
    invoice_subscription_to_parent,
    invoice_payment_intent_to_payments,
    invoice_line_price_to_pricing,
)


def normalise(obj: Obj, api_version: str | None) -> Obj:
    """The current shape of `obj` (a Stripe `data.object`); returns a new dict."""
    out = dict(obj)
    for upcast in UPCASTERS:
        out = upcast(out, api_version)
    return out
