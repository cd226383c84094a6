"""History, as_of and explain through real processes (ingest, worker, api, replay) on real
Kafka and Postgres: one customer subscribes, upgrades, falls past due, cancels, buys a
movie and gets it refunded. One system for the module: the walk runs once; each test reads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from entitled.settings import Settings
from launcher.services import Endpoints
from launcher.stripe import events as se
from tests.conftest import fresh_database, new_topic, settings_for
from tests.support.db import query
from tests.support.polling import wait_until
from tests.support.processes import Procs
from tests.support.system import System, start_system

T0 = int(time.time()) - 100_000  # the walk happened in the past: as_of refuses the future
SUB, CUS, PI, CHARGE = "sub_walk", "cus_walk", "pi_walk", "ch_walk"
ACTION_MOVIE, DRAMA_MOVIE, BOUGHT = "1", "22", "3"  # demo catalogue: action, drama, action


@dataclass
class Step:
    name: str
    at: int  # the step's events are created at this second
    events: list[dict[str, Any]]
    groups: list[str]  # held after the step
    movies: list[str]
    ids: list[str] = field(default_factory=list)

    @property
    def inside(self) -> int:
        """A moment inside the step: after its events, before the next step's."""
        return self.at + 50


def _sub(status: str, product: str, price: str, at: int, item: str) -> dict[str, Any]:
    return se.subscription(
        SUB, customer=CUS, items=[(price, product)], status=status, created=T0, item_ids=[item]
    )


def _steps() -> list[Step]:
    def ev(kind: str, obj: dict[str, Any], at: int) -> dict[str, Any]:
        return se.event(kind, obj, created=at)

    basic = se.product("prod_basic", groups="action", created=T0 - 100)
    premium = se.product("prod_premium", groups="action,drama", created=T0 - 100)
    cust = se.customer(CUS, email="walk@example.com", name="Walker", created=T0)
    session = se.checkout_session(
        "cs_walk", customer=CUS, movie_id=BOUGHT, payment_intent=PI, created=T0 + 500
    )
    refunded = se.charge(
        CHARGE, customer=CUS, payment_intent=PI, refunded=True, amount_refunded=399
    )
    a, b = T0 + 100, T0 + 200
    return [
        Step(
            "subscribe",
            a,
            [
                ev("product.created", basic, T0 - 100),
                ev("product.created", premium, T0 - 100),
                ev("customer.created", cust, T0),
                ev(
                    "customer.subscription.created",
                    _sub("active", "prod_basic", "p_b", a, "si_1"),
                    a,
                ),
            ],
            ["action"],
            [],
        ),
        Step(
            "upgrade",
            b,
            [
                ev(
                    "customer.subscription.updated",
                    _sub("active", "prod_premium", "p_p", b, "si_2"),
                    b,
                )
            ],
            ["action", "drama"],
            [],
        ),
        Step(
            "past_due",
            T0 + 300,
            [
                ev(
                    "customer.subscription.updated",
                    _sub("past_due", "prod_premium", "p_p", T0 + 300, "si_2"),
                    T0 + 300,
                )
            ],
            ["action", "drama"],
            [],
        ),
        Step(
            "cancel",
            T0 + 400,
            [
                ev(
                    "customer.subscription.deleted",
                    _sub("canceled", "prod_premium", "p_p", T0 + 400, "si_2"),
                    T0 + 400,
                )
            ],
            [],
            [],
        ),
        Step(
            "buy",
            T0 + 500,
            [ev("checkout.session.completed", session, T0 + 500)],
            [],
            [BOUGHT],
        ),
        Step("refund", T0 + 600, [ev("charge.refunded", refunded, T0 + 600)], [], []),
    ]


@dataclass
class Walk:
    system: System
    steps: list[Step]
    client: httpx.Client

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.client.get(path, params=params)


@pytest.fixture(scope="module")
def walk(
    services: Endpoints,
    services_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Walk]:
    """One system (ingest, worker, api) for the module; the customer walked through it."""
    with fresh_database(services.database_url, "t_") as database_url:
        settings = settings_for(
            services, services_settings, new_topic(services.bootstrap), database_url
        )
        yield from _walk_through(settings, tmp_path_factory)


def _walk_through(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walk]:
    procs = Procs(settings, Path(tmp_path_factory.mktemp("history")))
    try:
        system = start_system(procs)
        steps = _steps()
        with httpx.Client(base_url=system.api_url, timeout=30) as client:
            for step in steps:
                for event in step.events:
                    r = system.post_event(event)
                    assert r.status_code == 200, r.text
                    step.ids.append(event["id"])
                # folded before the next step: each step is its own batch, its own change
                last = step.ids[-1]
                wait_until(
                    lambda last=last: (
                        client.get(
                            f"/v1/customers/{CUS}/entitlements", params={"min_event": last}
                        ).status_code
                        == 200
                    ),
                    60,
                    f"{step.name} folded",
                    procs,
                )
            yield Walk(system, steps, client)
    finally:
        procs.stop_all()
        print(procs.report())


def _held_at(w: Walk, at: int) -> tuple[list[str], list[str]]:
    r = w.get(f"/v1/customers/{CUS}/entitlements", as_of=at)
    assert r.status_code == 200, r.text
    body = r.json()
    return body["groups"], body["movie_ids"]


def _available_at(w: Walk, at: int) -> dict[str, bool]:
    r = w.get("/v1/search", customer=CUS, q="", limit=100, as_of=at)
    assert r.status_code == 200, r.text
    return {hit["movie_id"]: hit["available"] for hit in r.json()["results"]}


def _expected_available(step: Step) -> dict[str, bool]:
    return {
        ACTION_MOVIE: "action" in step.groups,
        DRAMA_MOVIE: "drama" in step.groups,
        BOUGHT: "action" in step.groups or BOUGHT in step.movies,
    }


def test_history_lists_each_change_newest_first(walk: Walk) -> None:
    r = walk.get(f"/v1/customers/{CUS}/history")
    assert r.status_code == 200, r.text
    changes = r.json()["changes"]
    # past_due changes nothing (past_due still entitles): five changes, not six
    changing = [s for s in walk.steps if s.name != "past_due"]
    assert [c["when"] for c in changes] == [s.at for s in reversed(changing)]
    assert [c["event_id"] for c in changes] == [s.ids[-1] for s in reversed(changing)]
    assert [c["event_type"] for c in changes] == [
        "charge.refunded",
        "checkout.session.completed",
        "customer.subscription.deleted",
        "customer.subscription.updated",
        "customer.subscription.created",
    ]
    assert [(c["groups"]["after"], c["movies"]["after"]) for c in changes] == [
        (s.groups, s.movies) for s in reversed(changing)
    ]
    assert changes[2]["groups"] == {
        "before": ["action", "drama"],
        "after": [],
        "added": [],
        "removed": ["action", "drama"],
    }
    assert {c["cause"] for c in changes} == {"event"}
    assert len({c["version"] for c in changes}) == 1
    # paginated: two at a time, following `next`, gives the same list
    pages: list[dict[str, Any]] = []
    before = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"before": before} if before else {})}
        page = walk.get(f"/v1/customers/{CUS}/history", **params).json()
        pages += page["changes"]
        before = page["next"]
        if before is None:
            break
    assert pages == changes


def test_as_of_inside_each_step(walk: Walk) -> None:
    for step in walk.steps:
        assert _held_at(walk, step.inside) == (step.groups, step.movies), step.name
        assert _available_at(walk, step.inside) | _expected_available(step) == _available_at(
            walk, step.inside
        ), step.name
    # at the exact second of an event, its change counts (at or before)
    assert _held_at(walk, walk.steps[1].at) == (["action", "drama"], [])
    assert _held_at(walk, walk.steps[1].at - 1) == (["action"], [])


def test_as_of_refuses_what_it_cannot_answer(walk: Walk) -> None:
    path = f"/v1/customers/{CUS}/entitlements"
    before = walk.get(path, as_of=T0)  # before the subscription: nothing recorded yet
    assert before.status_code == 404 and "before the first change" in before.json()["error"]
    future = walk.get(path, as_of=int(time.time()) + 3600)
    assert future.status_code == 400 and "future" in future.json()["error"]
    for bad in ("yesterday", "1.5", "", "-3"):
        r = walk.get(path, as_of=bad)
        assert r.status_code == 400, (bad, r.text)
    both = walk.get(path, as_of=T0 + 150, min_event=walk.steps[0].ids[-1])
    assert both.status_code == 400 and "min_event" in both.json()["error"]
    search = walk.get("/v1/search", customer=CUS, q="", as_of=T0 - 10_000)
    assert search.status_code == 404
    assert walk.get("/v1/customers/cus_nobody/history").status_code == 404


def _explain(walk: Walk, movie: str, at: int) -> dict[str, Any]:
    r = walk.get(f"/v1/customers/{CUS}/explain", movie=movie, as_of=at)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_explain_at_each_step(walk: Walk) -> None:
    subscribe, upgrade, past_due, cancel, buy, refund = walk.steps
    # subscribed: movie 1 through group action, from the subscription's item and product
    e = _explain(walk, ACTION_MOVIE, subscribe.inside)
    assert e["available"] is True
    [grant] = e["granted_by"]
    assert grant["group"] == "action"
    [source] = grant["sources"]
    assert source["source"] == "metadata"
    assert (source["subscription"], source["item"], source["product"]) == (
        SUB,
        "si_1",
        "prod_basic",
    )
    assert source["event_id"] == subscribe.ids[-1]
    assert e["granted_at"]["event_id"] == subscribe.ids[-1]
    drama = _explain(walk, DRAMA_MOVIE, subscribe.inside)
    assert drama["available"] is False and drama["taken_away"] is None
    # upgraded: drama through the premium product's item
    drama = _explain(walk, DRAMA_MOVIE, upgrade.inside)
    assert drama["available"] is True
    assert drama["granted_by"][0]["sources"][0]["product"] == "prod_premium"
    assert drama["granted_at"]["event_type"] == "customer.subscription.updated"
    # past due: still available (past_due entitles), granted since the upgrade
    e = _explain(walk, DRAMA_MOVIE, past_due.inside)
    assert e["available"] is True and e["granted_at"]["event_id"] == upgrade.ids[-1]
    # cancelled: taken away by the cancellation, with its event
    e = _explain(walk, ACTION_MOVIE, cancel.inside)
    assert e["available"] is False
    gone = e["taken_away"]
    assert (gone["kind"], gone["event_id"], gone["when"]) == (
        "cancellation",
        cancel.ids[-1],
        cancel.at,
    )
    assert gone["groups_lost"] == ["action"]
    # bought: movie 3 through the purchase
    e = _explain(walk, BOUGHT, buy.inside)
    assert e["available"] is True
    [grant] = e["granted_by"]
    assert grant["movie"] == BOUGHT
    assert grant["sources"][0]["source"] == "purchase"
    assert grant["sources"][0]["purchase"] == "cs_walk"
    # refunded: taken away by the refund
    e = _explain(walk, BOUGHT, refund.inside)
    assert e["available"] is False
    assert (e["taken_away"]["kind"], e["taken_away"]["event_id"]) == ("refund", refund.ids[-1])
    assert e["taken_away"]["movie_lost"] is True
    # now, without a movie: nothing held, what was lost and by what
    whole = walk.get(f"/v1/customers/{CUS}/explain").json()
    assert whole["groups"] == {} and whole["movies"] == {}
    assert whole["lost"]["groups"]["drama"]["taken_away"]["kind"] == "cancellation"
    assert whole["lost"]["movies"][BOUGHT]["taken_away"]["kind"] == "refund"


def test_explain_command(walk: Walk) -> None:
    cancel = walk.steps[3]
    text = walk.system.run("explain", CUS, ACTION_MOVIE, "--at", str(cancel.inside))
    assert text.returncode == 0, text.stderr
    assert f"{CUS} may not watch movie {ACTION_MOVIE}" in text.stdout
    assert "cancellation" in text.stdout and cancel.ids[-1] in text.stdout
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(walk.steps[0].inside))
    out = walk.system.run("explain", CUS, ACTION_MOVIE, "--at", at, "--json")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["available"] is True
    assert answer["granted_by"][0]["sources"][0]["subscription"] == SUB
    future = walk.system.run("explain", CUS, "--at", str(int(time.time()) + 3600))
    assert future.returncode != 0 and "future" in future.stderr


def test_a_replay_build_answers_as_of_the_same(walk: Walk) -> None:
    """The build records the whole log's history for its version; the swap publishes only
    the differences (none here)."""
    before = {s.name: (_held_at(walk, s.inside), _available_at(walk, s.inside)) for s in walk.steps}
    settings = walk.system.settings
    feed_before = query(settings, "SELECT count(*) FROM entitled.changes")[0][0]
    out = walk.system.run("replay", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    after = {s.name: (_held_at(walk, s.inside), _available_at(walk, s.inside)) for s in walk.steps}
    assert after == before
    history = walk.get(f"/v1/customers/{CUS}/history").json()["changes"]
    assert {c["cause"] for c in history} == {"build"}
    assert {c["version"] for c in history} == {2}
    assert [c["event_id"] for c in history] == [
        s.ids[-1] for s in reversed(walk.steps) if s.name != "past_due"
    ]
    # the swap published nothing: the new version holds what the old one did
    assert query(settings, "SELECT count(*) FROM entitled.changes")[0][0] == feed_before
    e = _explain(walk, ACTION_MOVIE, walk.steps[3].inside)
    assert e["taken_away"]["kind"] == "cancellation"
