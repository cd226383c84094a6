"""Property: the same events give the same tables in any order Stripe can deliver them.

Random histories (products with groups and movies, customers, subscription lifecycles with
status and item changes, purchases, charges, refunds, both API shapes, unknown types) are
folded once in order and once shuffled with duplicates, batch by batch with `seen` carried
across batches as the writer does. Final rows (without log positions) and every customer's
entitlements must be equal.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entitled.shell import stripe_events as se
from projections.entitlements import Entitlement, Policy, derive
from projections.events import StripeEvent, parse
from projections.fold import Key, fold_batch
from projections.rows import (
    ChargeRow,
    ProductRow,
    PurchaseRow,
    RefundRow,
    Row,
    Stamp,
    SubscriptionRow,
    rank_of,
)

GROUPS = ("action", "animated", "drama")
STATUSES = ("active", "trialing", "past_due", "unpaid", "incomplete", "paused", "canceled")
T0 = 1_700_000_000

Step = tuple[str, dict[str, Any], bool]  # (event type, object, legacy shape)


def _product_history(rnd: random.Random, pid: str, movie: str | None) -> list[Step]:
    def groups() -> str | None:
        chosen = [g for g in GROUPS if rnd.random() < 0.4]
        return ", ".join(chosen) if chosen else None

    steps: list[Step] = [
        ("product.created", se.product(pid, groups=groups(), movie_id=movie), False)
    ]
    for _ in range(rnd.randint(0, 2)):
        steps.append(("product.updated", se.product(pid, groups=groups(), movie_id=movie), False))
    if rnd.random() < 0.15:
        steps.append(("product.deleted", se.product(pid, movie_id=movie), False))
    return steps


def _subscription_history(
    rnd: random.Random, sid: str, cus: str, products: list[str]
) -> list[Step]:
    def snap(status: str) -> tuple[dict[str, Any], bool]:
        chosen = rnd.sample(products, rnd.randint(1, len(products)))
        legacy = rnd.random() < 0.4
        obj = se.subscription(
            sid,
            customer=cus,
            status=status,
            legacy=legacy,
            items=[(f"price_{p}", p) for p in chosen],
            item_ids=[f"si_{sid}_{p}" for p in chosen],
            cancel_at_period_end=rnd.random() < 0.3,
            created=T0,
            period_start=T0,
        )
        return obj, legacy

    status = rnd.choice(("incomplete", "trialing", "active"))
    steps: list[Step] = [("customer.subscription.created", *snap(status))]
    for _ in range(rnd.randint(0, 4)):
        if status == "canceled":
            break
        new = rnd.choice(STATUSES)
        kind = {"paused": "paused"}.get(new, "resumed" if status == "paused" else "updated")
        if new == "canceled":
            kind = "deleted"
        steps.append((f"customer.subscription.{kind}", *snap(new)))
        status = new
    if status != "canceled" and rnd.random() < 0.2:
        steps.append(("customer.subscription.deleted", *snap("canceled")))
    return steps


def _purchase_histories(
    rnd: random.Random, n: int, cus: str, movies: list[tuple[str, str]]
) -> list[list[Step]]:
    """A one-off purchase: payment intent, maybe its checkout session, charge, refunds."""
    pi, ch = f"pi_{cus}_{n}", f"ch_{cus}_{n}"
    amount = 400
    movie = rnd.choice(movies)[1] if movies and rnd.random() < 0.8 else f"m_{n}"
    succeeded = rnd.random() < 0.85
    pi_steps: list[Step] = [
        (
            "payment_intent.created",
            se.payment_intent(
                pi, customer=cus, movie_id=movie, status="requires_payment_method", amount=amount
            ),
            False,
        )
    ]
    if rnd.random() < 0.5:
        pi_steps.append(
            (
                "payment_intent.processing",
                se.payment_intent(
                    pi, customer=cus, movie_id=movie, status="processing", amount=amount
                ),
                False,
            )
        )
    pi_steps.append(
        (
            "payment_intent.succeeded" if succeeded else "payment_intent.canceled",
            se.payment_intent(
                pi,
                customer=cus,
                movie_id=movie,
                amount=amount,
                status="succeeded" if succeeded else "canceled",
            ),
            False,
        )
    )
    out = [pi_steps]
    if rnd.random() < 0.5:
        out.append(
            [
                (
                    "checkout.session.completed",
                    se.checkout_session(
                        f"cs_{cus}_{n}",
                        customer=cus,
                        movie_id=movie,
                        payment_intent=pi,
                        amount_total=amount,
                        payment_status="paid" if succeeded else "unpaid",
                    ),
                    False,
                )
            ]
        )
    if not succeeded:
        return out
    charge_steps: list[Step] = [
        ("charge.succeeded", se.charge(ch, customer=cus, payment_intent=pi, amount=amount), False)
    ]
    refunded = 0
    for r in range(rnd.choice((0, 0, 1, 2))):
        part = rnd.choice((100, 300, 400))
        refunded = min(amount, refunded + part)
        rid = f"re_{cus}_{n}_{r}"
        refund_steps: list[Step] = [
            (
                "refund.created",
                se.refund(rid, charge=ch, payment_intent=pi, amount=part, status="pending"),
                False,
            )
        ]
        if rnd.random() < 0.8:
            refund_steps.append(
                ("refund.updated", se.refund(rid, charge=ch, payment_intent=pi, amount=part), False)
            )
        out.append(refund_steps)
        charge_steps.append(
            (
                "charge.refunded",
                se.charge(
                    ch,
                    customer=cus,
                    payment_intent=pi,
                    amount=amount,
                    amount_refunded=refunded,
                    refunded=refunded >= amount,
                ),
                False,
            )
        )
    out.append(charge_steps)
    return out


def _invoice_history(rnd: random.Random, iid: str, cus: str, product: str) -> list[Step]:
    legacy = rnd.random() < 0.5
    lines = [(f"price_{product}", product)]
    steps: list[Step] = [
        (
            "invoice.created",
            se.invoice(iid, customer=cus, lines=lines, status="draft", legacy=legacy),
            legacy,
        ),
        (
            "invoice.finalized",
            se.invoice(iid, customer=cus, lines=lines, status="open", legacy=legacy),
            legacy,
        ),
    ]
    if rnd.random() < 0.7:
        steps.append(
            (
                "invoice.paid",
                se.invoice(
                    iid,
                    customer=cus,
                    lines=lines,
                    status="paid",
                    payment_intent=f"pi_{iid}",
                    legacy=legacy,
                ),
                legacy,
            )
        )
    elif rnd.random() < 0.5:
        steps.append(
            (
                "invoice.voided",
                se.invoice(iid, customer=cus, lines=lines, status="void", legacy=legacy),
                legacy,
            )
        )
    return steps


def history(rnd: random.Random) -> list[StripeEvent]:
    """One random world's events in a Stripe-plausible order, with distinct `created` per
    object except deliberate same-second ties where the rank rises (create < update < end)."""
    products = [f"prod_{i}" for i in range(rnd.randint(1, 4))]
    movies = [(p, f"movie_{p}") for p in products if rnd.random() < 0.4]
    movie_of = dict(movies)
    objects: list[list[Step]] = [_product_history(rnd, p, movie_of.get(p)) for p in products]
    for c in range(rnd.randint(1, 3)):
        cus = f"cus_{c}"
        cust: list[Step] = [("customer.created", se.customer(cus), False)]
        if rnd.random() < 0.3:
            cust.append(("customer.updated", se.customer(cus, name="N"), False))
        objects.append(cust)
        for s in range(rnd.randint(0, 2)):
            objects.append(_subscription_history(rnd, f"sub_{c}_{s}", cus, products))
        for n in range(rnd.randint(0, 2)):
            objects.extend(_purchase_histories(rnd, n, cus, movies))
        if movies and rnd.random() < 0.3:
            objects.append(_invoice_history(rnd, f"in_{c}", cus, rnd.choice(movies)[0]))
    objects.append([("coupon.created", {"id": "co_1", "object": "coupon"}, False)])

    events: list[StripeEvent] = []
    clock = T0
    last: dict[int, tuple[int, str]] = {}  # object index -> (created, type) of its last event
    queues = [list(reversed(steps)) for steps in objects]
    while any(queues):
        i = rnd.choice([k for k, q in enumerate(queues) if q])
        event_type, obj, legacy = queues[i].pop()
        clock += 1
        created = clock
        prev = last.get(i)
        if prev is not None and rank_of(prev[1]) < rank_of(event_type) and rnd.random() < 0.3:
            created = prev[0]  # a same-second tie that the rank breaks
        last[i] = (created, event_type)
        version = se.LEGACY_API_VERSION if legacy else se.CURRENT_API_VERSION
        raw = se.encode(
            se.event(event_type, obj, created=created, api_version=version, id=f"evt_{len(events)}")
        )
        events.append(parse(raw, partition=0, offset=0))
    return events


def deliver(events: list[StripeEvent], rnd: random.Random) -> list[StripeEvent]:
    """Any order Stripe can produce: shuffled, some events twice; positioned as in a log."""
    out = list(events)
    for _ in range(rnd.randint(0, max(1, len(events) // 4))):
        out.insert(rnd.randint(0, len(out)), rnd.choice(events))
    rnd.shuffle(out)
    partitions = rnd.randint(1, 3)
    return [
        dataclasses.replace(e, partition=rnd.randrange(partitions), offset=n)
        for n, e in enumerate(out)
    ]


def batches(events: list[StripeEvent], rnd: random.Random) -> Iterator[list[StripeEvent]]:
    i = 0
    while i < len(events):
        n = rnd.randint(1, max(1, len(events) // 2))
        yield events[i : i + n]
        i += n


def fold_all(chunks: Iterator[list[StripeEvent]]) -> dict[Key, Row]:
    tables: dict[Key, Row] = {}
    seen: set[str] = set()
    for chunk in chunks:
        result = fold_batch(chunk, tables, seen)
        tables.update(result.changed)
        seen.update(e.id for e in chunk)  # the writer records every id it consumed
    return tables


def without_positions(tables: dict[Key, Row]) -> dict[Key, Row]:
    return {
        k: dataclasses.replace(r, stamp=Stamp(r.stamp.created, r.stamp.rank, r.stamp.stage, 0, 0))
        for k, r in tables.items()
    }


def entitlements(tables: dict[Key, Row]) -> dict[str, Entitlement]:
    rows = list(tables.values())
    products = {r.id: r for r in rows if isinstance(r, ProductRow)}
    refunds = [r for r in rows if isinstance(r, RefundRow)]
    customers = {k[1] for k in tables if k[0] == "customers"}
    return {
        c: derive(
            [r for r in rows if isinstance(r, SubscriptionRow) and r.customer == c],
            [r for r in rows if isinstance(r, PurchaseRow) and r.customer == c],
            [r for r in rows if isinstance(r, ChargeRow) and r.customer == c],
            refunds,
            products,
            Policy(),
        )
        for c in customers
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=st.randoms(use_true_random=False), delivery=st.randoms(use_true_random=False))
def test_any_delivery_order_gives_the_same_tables(
    world: random.Random, delivery: random.Random
) -> None:
    events = history(world)
    in_order = [dataclasses.replace(e, offset=n) for n, e in enumerate(events)]
    expected = fold_all(iter([in_order]))
    got = fold_all(batches(deliver(events, delivery), delivery))
    assert without_positions(got) == without_positions(expected)
    assert entitlements(got) == entitlements(expected)


def test_histories_are_meaningful() -> None:
    """The generator does produce entitlements of both kinds, ties and refunds."""
    rnd = random.Random(7)
    groups = movies = ties = refunds = 0
    for _ in range(40):
        events = history(rnd)
        tables = fold_all(iter([events]))
        for ent in entitlements(tables).values():
            groups += bool(ent.groups)
            movies += bool(ent.movie_ids)
        seen: dict[str, int] = {}
        for e in events:
            ties += seen.get(e.object_id or "") == e.created
            seen[e.object_id or ""] = e.created
        refunds += sum(1 for k in tables if k[0] == "refunds")
    assert groups > 5 and movies > 5 and ties > 5 and refunds > 5
