"""Property: the same events give the same tables in any order Stripe can deliver them.

Random histories (products with groups and movies, customers, subscription lifecycles with
status and item changes, purchases, charges, refunds, both API shapes, unknown types) are
folded once in order and once shuffled with duplicates, batch by batch with `seen` carried
across batches as the writer does. Final rows (without log positions) and every customer's
entitlements must be equal.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.stripe import events as se
from projections.model.entitlements import Entitlement, Policy, derive, gather
from projections.model.events import StripeEvent, parse
from projections.model.fold import Key, fold_batch
from projections.model.rows import ProductRow, Row, Stamp, SubscriptionRow, rank_of
from projections.model.rules import stamp_of
from tests.support.examples import examples
from tests.support.parsed import ev

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
    legacy = rnd.random() < 0.4  # Stripe does not change an object's shape mid-history

    def snap(status: str) -> tuple[dict[str, Any], bool]:
        chosen = rnd.sample(products, rnd.randint(1, len(products)))
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
        # basil invoices no longer name their payment intent: invoice_payment.paid does
        paid = se.invoice(
            iid,
            customer=cus,
            lines=lines,
            status="paid",
            payment_intent=f"pi_{iid}" if legacy else None,
            legacy=legacy,
        )
        steps.append(("invoice.paid", paid, legacy))
        steps.append(("invoice.payment_succeeded", paid, legacy))
    elif rnd.random() < 0.5:
        steps.append(
            (
                "invoice.voided",
                se.invoice(iid, customer=cus, lines=lines, status="void", legacy=legacy),
                legacy,
            )
        )
    return steps


def _invoice_payment_history(rnd: random.Random, iid: str) -> list[list[Step]]:
    """The invoice payment linking a paid invoice to its payment intent, and maybe a full
    refund or a dispute of that payment intent (which take the purchase back, or not)."""
    pi = f"pi_{iid}"
    link = {
        "id": f"inpay_{iid}",
        "object": "invoice_payment",
        "invoice": iid,
        "status": "paid",
        "is_default": True,
        "payment": {"type": "payment_intent", "payment_intent": pi},
    }
    out = [[("invoice_payment.paid", link, False)]]
    roll = rnd.random()
    if roll < 0.3:
        out.append(
            [
                (
                    "refund.created",
                    se.refund(f"re_{iid}", charge=f"ch_{iid}", payment_intent=pi, amount=999),
                    False,
                )
            ]
        )
    elif roll < 0.6:
        dispute = {
            "id": f"dp_{iid}",
            "object": "dispute",
            "charge": f"ch_{iid}",
            "payment_intent": pi,
            "amount": 999,
            "status": "needs_response",
        }
        steps: list[Step] = [("charge.dispute.created", dispute, False)]
        closed = rnd.choice(("lost", "won", "warning_closed"))
        steps.append(("charge.dispute.closed", {**dispute, "status": closed}, False))
        out.append(steps)
    return out


def _changed(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`data.previous_attributes` of an update from `old` to `new`, as Stripe writes it:
    top-level values whole, metadata only by the keys that changed (null: was absent)."""
    out = {k: old.get(k) for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
    was, now = out.get("metadata"), new.get("metadata")
    if isinstance(was, dict) and isinstance(now, dict):
        out["metadata"] = {
            k: was.get(k) for k in was.keys() | now.keys() if was.get(k) != now.get(k)
        }
    return out


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
        if movies and rnd.random() < 0.4:
            invoice = _invoice_history(rnd, f"in_{c}", cus, rnd.choice(movies)[0])
            objects.append(invoice)
            if invoice[-1][0] == "invoice.payment_succeeded":
                objects.extend(_invoice_payment_history(rnd, f"in_{c}"))
    objects.append([("coupon.created", {"id": "co_1", "object": "coupon"}, False)])

    events: list[StripeEvent] = []
    clock = T0
    # object index -> its last event: created, key (rank, stage), view, raw object, and the
    # views of the same-second run it ends (with the state before the run)
    last: dict[int, tuple[int, tuple[int, int], Any, dict[str, Any], list[Any]]] = {}
    queues = [list(reversed(steps)) for steps in objects]
    while any(queues):
        i = rnd.choice([k for k, q in enumerate(queues) if q])
        step = queues[i].pop()
        event_type, obj, _legacy = step
        clock += 1
        created = clock
        prev = last.get(i)
        changed = _changed(prev[3], obj) if prev is not None and rank_of(event_type) == 1 else None

        def encode(when: int, n: int, *, step: Step, changed: dict[str, Any] | None) -> bytes:
            event_type, obj, legacy = step
            version = se.LEGACY_API_VERSION if legacy else se.CURRENT_API_VERSION
            doc = se.event(
                event_type,
                obj,
                created=when,
                api_version=version,
                id=f"evt_{n}",
                previous_attributes=changed or None,
            )
            return se.encode(doc)

        event = parse(
            encode(created, len(events), step=step, changed=changed), partition=0, offset=0
        )
        key = (rank_of(event_type), stamp_of(event).stage)
        run: list[Any] = [prev[2], event.obj] if prev is not None else [event.obj]
        if prev is not None and rnd.random() < 0.4:
            # Same-second ties that something other than log order decides: a higher rank
            # or lifecycle stage, the same state again (invoice.paid + payment_succeeded),
            # or an update chained by previous_attributes to a state new in this second.
            decided = (
                key > prev[1]
                or (key == prev[1] and event.obj == prev[2])
                or (key == prev[1] and bool(changed) and event.obj not in prev[4])
            )
            if decided:
                created = prev[0]
                raw = encode(created, len(events), step=step, changed=changed)
                event = parse(raw, partition=0, offset=0)
                run = [*prev[4], event.obj]
        last[i] = (created, key, event.obj, obj, run)
        events.append(event)
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
    return fold_counting(chunks)[0]


def fold_counting(chunks: Iterator[list[StripeEvent]]) -> tuple[dict[Key, Row], int]:
    """The tables, and the ties that log order decided on the way."""
    tables: dict[Key, Row] = {}
    seen: set[str] = set()
    ties = 0
    for chunk in chunks:
        result = fold_batch(chunk, tables, seen)
        tables.update(result.changed)
        ties += result.ties
        seen.update(e.id for e in chunk)  # the writer records every id it consumed
    return tables, ties


def _unplaced(row: Row) -> Row:
    s = row.stamp
    any_row: Any = row  # mypy cannot replace a field across a union of row classes
    return dataclasses.replace(  # type: ignore[no-any-return]
        any_row,
        stamp=Stamp(s.created, s.rank, s.stage, 0, 0),
        rivals=tuple(_unplaced(r) for r in row.rivals),
    )


def without_positions(tables: dict[Key, Row]) -> dict[Key, Row]:
    return {k: _unplaced(r) for k, r in tables.items()}


def entitlements(tables: dict[Key, Row]) -> dict[str, Entitlement]:
    rows = list(tables.values())
    products = {r.id: r for r in rows if isinstance(r, ProductRow)}
    customers = sorted(k[1] for k in tables if k[0] == "customers")
    return {c: derive(f, Policy()) for c, f in gather(customers, rows, products).items()}


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
    """The generator does produce entitlements of both kinds, ties of every kind, refunds,
    disputes and invoice payments."""
    rnd = random.Random(7)
    groups = movies = ties = same_rank = chained = refunds = links = 0
    for _ in range(40):
        events = history(rnd)
        tables = fold_all(iter([events]))
        for ent in entitlements(tables).values():
            groups += bool(ent.groups)
            movies += bool(ent.movie_ids)
        seen: dict[str, StripeEvent] = {}
        for e in events:
            before = seen.get(e.object_id or "")
            if before is not None and before.created == e.created:
                ties += 1
                if rank_of(before.type) == rank_of(e.type):
                    same_rank += 1
                    chained += e.previous is not None and e.object_type == "subscription"
            seen[e.object_id or ""] = e
        refunds += sum(1 for k in tables if k[0] == "refunds")
        links += sum(1 for k in tables if k[0] in ("invoice_payments", "disputes"))
    assert groups > 5 and movies > 5 and ties > 5 and refunds > 5 and links > 5
    assert same_rank > 10 and chained > 3


def _permutations_agree(before: list[StripeEvent], events: list[StripeEvent]) -> None:
    """Folding `before`, then `events` in every order, gives the same tables and rights."""
    expected = None
    for order in itertools.permutations(events):
        delivered = [dataclasses.replace(e, offset=n) for n, e in enumerate([*before, *order])]
        tables, _ties = fold_counting(iter([delivered]))
        got = (without_positions(tables), entitlements(tables))
        if expected is None:
            expected = got
        assert got == expected, [e.type for e in order]


def test_every_order_of_same_second_lifecycle_events_agrees() -> None:
    inv = se.invoice("in_1", customer="cus_1", lines=[("price_m", "prod_m")], status="open")
    paid = {**inv, "status": "paid", "amount_paid": 999, "amount_remaining": 0}
    pi = se.payment_intent("pi_1", customer="cus_1", movie_id="7", status="processing")
    events = [
        ev("customer.created", se.customer("cus_1"), created=T0),
        ev("product.created", se.product("prod_m", movie_id="42"), created=T0),
        ev("invoice.finalized", inv, created=T0 + 1),
        ev("invoice.paid", paid, created=T0 + 1),
        ev("invoice.payment_succeeded", paid, created=T0 + 1),
        ev("payment_intent.processing", pi, created=T0 + 1),
        ev("payment_intent.succeeded", {**pi, "status": "succeeded"}, created=T0 + 1),
    ]
    _permutations_agree(events[:2], events[2:])
    tables = fold_all(iter([events[::-1]]))
    assert entitlements(tables)["cus_1"] == Entitlement((), ("42", "7"))


def test_every_order_of_a_same_second_update_chain_agrees() -> None:
    def snap(status: str, products: list[str]) -> dict[str, Any]:
        return se.subscription(
            "sub_1",
            customer="cus_1",
            status=status,
            items=[(f"price_{p}", p) for p in products],
            item_ids=[f"si_{p}" for p in products],
            created=T0,
            period_start=T0,
        )

    states = [
        snap("incomplete", ["prod_a"]),
        snap("active", ["prod_a"]),
        snap("active", ["prod_b"]),
        snap("past_due", ["prod_b"]),
    ]
    events = [ev("customer.created", se.customer("cus_1"), created=T0)]
    events += [
        ev("product.created", se.product(p, groups=g), created=T0)
        for p, g in (("prod_a", "action"), ("prod_b", "drama"))
    ]
    events.append(ev("customer.subscription.created", states[0], created=T0 + 1))
    for old, new in itertools.pairwise(states):
        changed = _changed(old, new)
        events.append(
            ev("customer.subscription.updated", new, created=T0 + 1, previous_attributes=changed)
        )
    _permutations_agree(events[:3], events[3:])  # created, A -> B -> C in one second
    tables, ties = fold_counting(iter([events]))
    row = tables[("subscriptions", "sub_1")]
    assert isinstance(row, SubscriptionRow) and row.status == "past_due" and ties == 0
    assert entitlements(tables)["cus_1"] == Entitlement(("drama",), ())
