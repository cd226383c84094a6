"""Completing Stripe's active entitlement summary: the
`entitlements.active_entitlement_summary.updated` event lists at most 10 entitlements and says
`has_more`; the hydrator then lists `/v1/entitlements/active_entitlements?customer=` to the end
and logs the whole list as the summary (same object shape, `has_more: false`), stamped with
the time it was read, which the fold takes as the whole truth for that moment."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from ingest.stripe_api import Retrieved, StripeApi

__all__ = ["PATH", "REASON", "complete", "summary_customer"]

SUMMARY_UPDATED = "entitlements.active_entitlement_summary.updated"
SUMMARY_OBJECT = "entitlements.active_entitlement_summary"
PATH = "/v1/entitlements/active_entitlements"
REASON = "summary"  # the hydrator's Fetch.reason of a summary completion
_ID = re.compile(r"cus_[A-Za-z0-9_]{1,250}")


def summary_customer(event: Mapping[str, Any]) -> str | None:
    """The customer whose summary `event` cut short (`has_more`), or None."""
    if event.get("type") != SUMMARY_UPDATED:
        return None
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    listed = obj.get("entitlements") if isinstance(obj, Mapping) else None
    if not isinstance(listed, Mapping) or listed.get("has_more") is not True:
        return None
    customer = obj.get("customer") if isinstance(obj, Mapping) else None
    return customer if isinstance(customer, str) and _ID.fullmatch(customer) else None


async def complete(api: StripeApi, customer: str, params: Mapping[str, Any]) -> Retrieved:
    """The customer's whole summary, listed to the end (`params` names the customer, and the
    Connect account when there is one)."""
    entitlements: list[dict[str, Any]] = []
    version, read_at = None, int(time.time())
    first = True
    async for page in api.pages(PATH, params):
        entitlements.extend(page.data)
        # Stamped with the FIRST page's request: the list describes no moment earlier than
        # that, and a webhook Stripe created after it must win (issue 19, point 1).
        version, read_at = page.api_version, page.read_at if first else read_at
        first = False
    obj = {
        "object": SUMMARY_OBJECT,
        "customer": customer,
        "entitlements": {"object": "list", "data": entitlements, "has_more": False, "url": PATH},
        "livemode": any(e.get("livemode") is True for e in entitlements),
    }
    return Retrieved(obj, version, read_at)
