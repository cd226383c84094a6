"""A realistic, reproducible WebFlicks event history, for benchmarks, chaos runs and demos.

Products (packages and single movies) and their prices first, then per customer: the
customer, a subscription lifecycle (created, activated, items changed, maybe cancelled at
period end, maybe deleted), one-off purchases, and some refunds (full and partial); now and
then a package's groups change. Events of one object get increasing `created` seconds (with
occasional same-second ties, which the fold's rank breaks), and both API shapes appear.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from launcher.stripe import events as se

Event = dict[str, Any]

PACKAGES = {
    "prod_action": "action",
    "prod_animated": "animated",
    "prod_family": "animated,comedy",
    "prod_thrills": "action,thriller",
}


@dataclass(frozen=True)
class Workload:
    customers: int
    seed: int = 7
    movies: int = 50
    legacy_share: float = 0.3
    start: int = 1_700_000_000
    # A package's groups change after every this many customers (0: never). Each change
    # reaches every subscriber of the package, so its cost grows with the customers so far.
    regroup_every: int = 500

    def catalogue(self) -> Iterator[Event]:
        t = self.start
        for prod, groups in PACKAGES.items():
            yield se.event("product.created", se.product(prod, groups=groups, created=t), created=t)
            price = "price_" + prod.removeprefix("prod_")
            yield se.event("price.created", se.price(price, product=prod, created=t), created=t)
        for m in range(1, self.movies + 1):
            prod = f"prod_movie_{m}"
            yield se.event(
                "product.created",
                se.product(prod, movie_id=str(m), name=f"Movie {m}", created=t),
                created=t,
            )

    def customer_history(self, n: int, rng: random.Random) -> Iterator[Event]:
        cus = f"cus_{n:07d}"
        t = self.start + 10 + n * 3
        legacy = rng.random() < self.legacy_share
        api = se.LEGACY_API_VERSION if legacy else se.CURRENT_API_VERSION
        yield se.event("customer.created", se.customer(cus, created=t), created=t, api_version=api)
        if rng.random() < 0.7:
            sub = f"sub_{n:07d}"
            prods = rng.sample(sorted(PACKAGES), k=rng.choice((1, 1, 2)))
            items = [("price_" + p.removeprefix("prod_"), p) for p in prods]
            ids = [f"si_{n:07d}_{i}" for i in range(len(items))]

            def snap(status: str, at: int, cape: bool = False) -> Event:
                obj = se.subscription(
                    sub,
                    customer=cus,
                    items=items,
                    status=status,
                    created=t,
                    cancel_at_period_end=cape,
                    legacy=legacy,
                    item_ids=ids[: len(items)],
                )
                return obj

            yield se.event(
                "customer.subscription.created", snap("incomplete", t), created=t, api_version=api
            )
            t += rng.choice((0, 1, 1, 2))  # same-second ties happen
            yield se.event(
                "customer.subscription.updated", snap("active", t), created=t, api_version=api
            )
            for _ in range(rng.randint(0, 3)):
                t += rng.randint(1, 5)
                if rng.random() < 0.5:
                    p = rng.choice(sorted(PACKAGES))
                    items = [("price_" + p.removeprefix("prod_"), p)]
                    ids = [f"si_{n:07d}_{t}"]
                status = rng.choice(("active", "active", "past_due", "unpaid", "trialing"))
                yield se.event(
                    "customer.subscription.updated",
                    snap(status, t, cape=rng.random() < 0.2),
                    created=t,
                    api_version=api,
                )
            if rng.random() < 0.25:
                t += rng.choice((0, 1, 3))
                yield se.event(
                    "customer.subscription.deleted", snap("canceled", t), created=t, api_version=api
                )
        for k in range(rng.choice((0, 0, 1, 2))):
            t += rng.randint(1, 4)
            movie = str(rng.randint(1, self.movies))
            pi = f"pi_{n:07d}_{k}"
            yield se.event(
                "payment_intent.succeeded",
                se.payment_intent(pi, customer=cus, movie_id=movie, created=t),
                created=t,
                api_version=api,
            )
            if rng.random() < 0.15:
                t += rng.randint(1, 4)
                full = rng.random() < 0.5
                yield se.event(
                    "charge.refunded",
                    se.charge(
                        f"ch_{n:07d}_{k}",
                        customer=cus,
                        payment_intent=pi,
                        amount_refunded=399 if full else 100,
                        refunded=full,
                        created=t,
                    ),
                    created=t,
                    api_version=api,
                )

    def events(self) -> Iterator[Event]:
        """The whole history: the catalogue, then customers interleaved, with occasional
        package group changes."""
        rng = random.Random(self.seed)
        yield from self.catalogue()
        for n in range(self.customers):
            yield from self.customer_history(n, rng)
            if n and self.regroup_every and n % self.regroup_every == 0:
                prod = rng.choice(sorted(PACKAGES))
                t = self.start + 10 + n * 3
                groups = PACKAGES[prod] if rng.random() < 0.5 else PACKAGES[prod] + ",bonus"
                yield se.event(
                    "product.updated", se.product(prod, groups=groups, created=t), created=t
                )
