"""Corpora of Stripe events for the corpus tests, each sample with the bytes to POST.

Three sources:

- `public_corpus`: event JSON that public repositories ship as test data (stripe-ruby-mock,
  supabase/stripe-sync-engine, pay-rails/pay, dj-stripe), old and current API versions,
  unchanged, with a `PROVENANCE.json` naming repository, path, commit and licence of each
  file. It is third-party data, not committed here: it is read from where
  `ENTITLED_STRIPE_CORPUS` points (default `../shared/stripe/corpus`, beside the checkout).
- `fixtures3_corpus`: one event per event type, its object Stripe's own example of that
  object type (`fixtures3.json` of stripe/openapi, shipped in `launcher/stripe_fixtures`), in the
  shape of the current API version; plus a preview (`invoice.upcoming`: an invoice without
  an id) and a thin event notification (no `data`, a `related_object` instead).
- `stripe_mock_corpus`: objects read from a running stripe-mock (current shape of the
  API version its spec was built for) wrapped as the events that carry them.

Many files share an event id (copied from one template); a shared id would be deduplicated
by the worker, not folded, so `distinct_ids` gives repeats a derived id.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from launcher.stripe import events as se
from launcher.stripe._objects import fixture_objects

CORPUS_ENV = "ENTITLED_STRIPE_CORPUS"
# The version stripe-mock v0.203.0's OpenAPI spec describes (its `info.version`).
STRIPE_MOCK_API_VERSION = "2026-08-26.dahlia"

Obj = dict[str, Any]


@dataclass(frozen=True)
class Sample:
    """One event to POST: where it came from, the event, and the exact body."""

    name: str
    event: Obj
    body: bytes

    @property
    def id(self) -> str:
        return str(self.event["id"])

    @property
    def type(self) -> str:
        return str(self.event.get("type"))


def _sample(name: str, event: Obj) -> Sample:
    return Sample(name, event, json.dumps(event).encode())


def corpus_dir() -> Path:
    """Where the public corpus is: `$ENTITLED_STRIPE_CORPUS`, else `../shared/stripe/corpus`."""
    given = os.environ.get(CORPUS_ENV)
    if given:
        return Path(given)
    return Path(__file__).resolve().parents[3] / "shared" / "stripe" / "corpus"


def public_corpus(directory: Path) -> list[Sample]:
    """Every file named in `directory/PROVENANCE.json`; files that are only an event's
    `data` or object (`wrap` set) get the envelope their provenance entry names (type,
    api_version, and where the source repository gives them id, created, fields dropped,
    previous_attributes)."""
    entries = json.loads((directory / "PROVENANCE.json").read_text())
    samples = []
    for entry in entries:
        raw = (directory / entry["file"]).read_bytes()
        doc = json.loads(raw)
        wrap = entry.get("wrap")
        if wrap is None:
            samples.append(Sample(entry["file"], doc, raw))
            continue
        obj = doc["object"] if wrap["data_is"] == "data" else doc
        for name in wrap.get("drop", ()):  # e.g. the id of an upcoming invoice
            del obj[name]
        stem = Path(entry["file"]).stem.replace(".", "_")
        directory_name = Path(entry["file"]).parent.name.replace("-", "_")
        created = wrap.get("created", obj.get("created"))
        event = se.event(
            wrap["type"],
            obj,
            id=wrap.get("id", f"evt_{directory_name}_{stem}"),
            created=created if isinstance(created, int) else 1_700_000_000,
            api_version=wrap["api_version"],
            previous_attributes=wrap.get("previous_attributes"),
        )
        samples.append(_sample(entry["file"], event))
    return samples


# Event type -> the fixtures3 resource its `data.object` is. Types the fold reads and the
# neighbours Stripe sends with them (the worker must pass over what it does not read).
FIXTURE_TYPES: Mapping[str, str] = {
    **{f"customer.{t}": "customer" for t in ("created", "updated", "deleted")},
    **{f"product.{t}": "product" for t in ("created", "updated", "deleted")},
    **{f"price.{t}": "price" for t in ("created", "updated", "deleted")},
    **{f"plan.{t}": "plan" for t in ("created", "updated")},
    **{
        f"customer.subscription.{t}": "subscription"
        for t in (
            "created",
            "updated",
            "paused",
            "resumed",
            "pending_update_applied",
            "pending_update_expired",
            "trial_will_end",
            "deleted",
        )
    },
    **{
        f"checkout.session.{t}": "checkout.session"
        for t in ("completed", "async_payment_succeeded", "async_payment_failed", "expired")
    },
    **{
        f"payment_intent.{t}": "payment_intent"
        for t in (
            "created",
            "requires_action",
            "processing",
            "amount_capturable_updated",
            "partially_funded",
            "payment_failed",
            "succeeded",
            "canceled",
        )
    },
    **{
        f"invoice.{t}": "invoice"
        for t in (
            "created",
            "updated",
            "finalized",
            "finalization_failed",
            "sent",
            "payment_action_required",
            "payment_failed",
            "paid",
            "payment_succeeded",
            "overdue",
            "will_be_due",
            "marked_uncollectible",
            "voided",
            "deleted",
        )
    },
    "invoice_payment.paid": "invoice_payment",
    "invoiceitem.created": "invoiceitem",
    **{
        f"charge.{t}": "charge"
        for t in ("pending", "succeeded", "captured", "updated", "failed", "expired", "refunded")
    },
    **{
        f"charge.dispute.{t}": "dispute"
        for t in ("created", "updated", "funds_withdrawn", "funds_reinstated", "closed")
    },
    "charge.refund.updated": "refund",
    **{f"refund.{t}": "refund" for t in ("created", "updated", "failed")},
    "entitlements.active_entitlement_summary.updated": "entitlements.active_entitlement_summary",
    **{
        f"subscription_schedule.{t}": "subscription_schedule"
        for t in ("created", "updated", "released", "canceled", "completed")
    },
    "customer.discount.created": "discount",
    "customer.tax_id.created": "tax_id",
    "customer.source.created": "card",
    "payment_method.attached": "payment_method",
    "setup_intent.succeeded": "setup_intent",
    "credit_note.created": "credit_note",
    "coupon.created": "coupon",
    "review.opened": "review",
    "radar.early_fraud_warning.created": "radar.early_fraud_warning",
    "billing_portal.session.created": "billing_portal.session",
}


def fixtures3_corpus(created: int) -> list[Sample]:
    """One event per `FIXTURE_TYPES` entry (current API shape), a preview, a thin event."""
    resources = fixture_objects()
    samples = [
        _sample(
            f"fixtures3:{event_type}",
            se.event(event_type, dict(resources[name]), created=created + n),
        )
        for n, (event_type, name) in enumerate(FIXTURE_TYPES.items())
    ]
    # Deleting the example customer would leave no live customer to check parking on.
    deleted = next(s for s in samples if s.type == "customer.deleted")
    deleted.event["data"]["object"]["id"] = "cus_corpus_deleted"
    samples[samples.index(deleted)] = _sample(deleted.name, deleted.event)
    preview = dict(resources["invoice"])
    del preview["id"]  # the upcoming invoice is not created yet: it has no id
    samples.append(
        _sample(
            "fixtures3:invoice.upcoming", se.event("invoice.upcoming", preview, created=created)
        )
    )
    samples.append(_sample("thin:v1.billing.meter.error_report_triggered", thin_event()))
    return samples


def thin_event() -> Obj:
    """A thin event notification (an event destination with thin payloads): no snapshot of
    the object, only what it is about; hydrate (issue 12) reads the rest from the API."""
    return {
        "id": se.new_id("evt_test"),
        "object": "v2.core.event",
        "type": "v1.billing.meter.error_report_triggered",
        "livemode": False,
        "created": "2026-11-30T12:00:00.000Z",
        "context": None,
        "reason": None,
        "related_object": {
            "id": "mtr_test_corpus",
            "type": "billing.meter",
            "url": "/v1/billing/meters/mtr_test_corpus",
        },
    }


# stripe-mock path -> the event types that carry that object.
STRIPE_MOCK_OBJECTS: Mapping[str, Sequence[str]] = {
    "/v1/customers/cus_123": ("customer.created", "customer.updated"),
    "/v1/products/prod_123": ("product.created", "product.updated"),
    "/v1/prices/price_123": ("price.created",),
    "/v1/subscriptions/sub_123": (
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    ),
    "/v1/invoices/in_123": ("invoice.created", "invoice.finalized", "invoice.paid"),
    "/v1/invoice_payments/inpay_123": ("invoice_payment.paid",),
    "/v1/checkout/sessions/cs_123": ("checkout.session.completed", "checkout.session.expired"),
    "/v1/payment_intents/pi_123": ("payment_intent.created", "payment_intent.succeeded"),
    "/v1/charges/ch_123": ("charge.succeeded", "charge.refunded"),
    "/v1/refunds/re_123": ("refund.created", "charge.refund.updated"),
    "/v1/disputes/dp_123": ("charge.dispute.created", "charge.dispute.closed"),
}


def stripe_mock_corpus(base: str, api_key: str, created: int) -> list[Sample]:
    """stripe-mock's objects wrapped as events, plus the event stripe-mock itself serves."""
    samples = []
    with httpx.Client(base_url=base, auth=(api_key, ""), timeout=10) as client:
        n = 0
        for path, types in STRIPE_MOCK_OBJECTS.items():
            reply = client.get(path)
            reply.raise_for_status()
            for event_type in types:
                event = se.event(
                    event_type,
                    reply.json(),
                    created=created + n,
                    api_version=STRIPE_MOCK_API_VERSION,
                )
                samples.append(_sample(f"stripe-mock:{path}:{event_type}", event))
                n += 1
        reply = client.get("/v1/events/evt_123")
        reply.raise_for_status()
        samples.append(Sample("stripe-mock:/v1/events/evt_123", reply.json(), reply.content))
    return samples


def distinct_ids(samples: Iterable[Sample]) -> list[Sample]:
    """The samples, a repeated event id replaced by `<id>_<n>` (then re-encoded)."""
    seen: dict[str, int] = {}
    out = []
    for s in samples:
        n = seen.get(s.id, 0)
        seen[s.id] = n + 1
        out.append(s if n == 0 else _sample(s.name, {**s.event, "id": f"{s.id}_{n + 1}"}))
    return out
