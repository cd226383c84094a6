"""Replay through real Kafka, Postgres and HTTP: a wrong rule, fixed, rebuilt with zero
downtime; dry run; rollback; one customer's rebuild."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import httpx

from entitled.settings import Settings
from launcher.stripe import events as se
from tests.support.db import caught_up, entitlements, query
from tests.support.kafka import publish
from tests.support.polling import get, wait_until
from tests.support.ports import free_port
from tests.support.processes import Procs

BUGGY = {"ENTITLED_RULE_PLUGINS": "tests.processors.buggy_rules"}


def _subscribe(cus: str, at: int) -> dict[str, Any]:
    sub = se.subscription(f"sub_{cus}", customer=cus, items=[("price_act", "prod_act")])
    return se.event("customer.subscription.created", sub, created=at)


def _cancel(cus: str, at: int) -> dict[str, Any]:
    sub = se.subscription(
        f"sub_{cus}", customer=cus, items=[("price_act", "prod_act")], status="canceled"
    )
    return se.event("customer.subscription.deleted", sub, created=at)


def _run(procs: Procs, *args: str, timeout: float = 120, **env: str) -> str:
    p = procs.spawn(*args, name=args[0], **env)
    assert p.popen is not None
    p.popen.wait(timeout)
    assert p.popen.returncode == 0, p.tail()
    return p.tail(200)


class SearchLoop(threading.Thread):
    """Searches as a user would, as fast as it can, recording every answer."""

    def __init__(self, api: str, customers: list[str]) -> None:
        super().__init__(daemon=True)
        self.api, self.customers = api, customers
        self.answers: dict[str, list[bool]] = defaultdict(list)
        self.failures: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.api, timeout=10) as client:
            while not self.stopping.is_set():
                for cus in self.customers:
                    try:
                        r = client.get("/v1/search", params={"customer": cus, "q": "heist"})
                    except httpx.HTTPError as exc:
                        self.failures.append(repr(exc))
                        continue
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                        continue
                    self.answers[cus].append(r.json()["results"][0]["available"])


def _changes(settings: Settings, cause: str) -> list[tuple[str, list[str], list[str]]]:
    return [
        (c, b, a)
        for c, b, a in query(
            settings,
            "SELECT customer, groups_before, groups_after FROM entitled.changes"
            " WHERE cause = %s ORDER BY customer, id",
            cause,
        )
    ]


def test_replay_fixes_a_wrong_rule_with_zero_downtime(settings: Settings, procs: Procs) -> None:
    wrong = ["cus_a", "cus_b"]
    publish(
        settings, [se.event("product.created", se.product("prod_act", groups="action"), created=10)]
    )
    publish(settings, [_subscribe(c, 100) for c in ["cus_a", "cus_b", "cus_c", "cus_d"]])
    publish(settings, [_cancel(c, 200) for c in wrong])
    buggy = procs.spawn("worker", name="buggy-worker", **BUGGY)
    wait_until(lambda: caught_up(settings), 60, "the buggy worker to catch up", procs)
    assert entitlements(settings)["cus_a"] == (["action"], [])  # the bug shows

    port = free_port()
    procs.spawn("api", "--port", str(port))
    api = f"http://127.0.0.1:{port}"
    wait_until(lambda: _ready(api), 30, "the api", procs)
    r = httpx.put(
        f"{api}/v1/movies/m1",
        json={"title": "The Heist", "keywords": "heist", "groups": ["action"]},
    )
    assert r.status_code in (200, 201), r.text

    # dry run with the fixed rules: exactly the wrongly entitled customers differ
    out = _run(procs, "replay", "--dry-run", "--yes")
    assert "2 customers differ" in out, out
    assert "cus_a" in out and "cus_b" in out and "cus_c" not in out

    # the fix is deployed: the live worker restarts without the bug
    buggy.stop()
    procs.spawn("worker", name="fixed-worker")
    loop = SearchLoop(api, ["cus_a", "cus_c", "cus_e"])
    loop.start()
    wait_until(lambda: len(loop.answers["cus_a"]) > 5, 30, "searches", procs)
    # events keep arriving before, during and after the replay
    publish(settings, [_subscribe("cus_e", 300), _cancel("cus_c", 301)])
    # folded live before the replay starts (a one-job replay of this small log can finish
    # before the restarted worker folds anything: those would show as the swap's changes)
    wait_until(
        lambda: (
            entitlements(settings).get("cus_e") == (["action"], [])
            and entitlements(settings).get("cus_c", ([], []))[0] == []
        ),
        60,
        "cus_e and cus_c folded live",
        procs,
    )
    newcomers: list[str] = []
    done = threading.Event()

    def keep_publishing() -> None:
        while not done.is_set():
            cus = f"cus_n{len(newcomers)}"
            publish(settings, [_subscribe(cus, 400)])
            newcomers.append(cus)

    publisher = threading.Thread(target=keep_publishing, daemon=True)
    publisher.start()
    try:
        # the fix takes access away from cus_a and cus_b: the operator saw it in the dry run
        replay = procs.spawn("replay", "--yes", "--force", name="replay")
        assert replay.popen is not None
        replay.popen.wait(120)
        assert replay.popen.returncode == 0, replay.tail()
        # the swap announces exactly the customers whose rights differ (the build itself
        # nothing): the two the fix corrects, and newcomers the build had folded before the
        # live worker did (readers see them gain access at the swap)
        replayed = _changes(settings, "replay")
        assert [c for c in replayed if not c[0].startswith("cus_n")] == [
            ("cus_a", ["action"], []),
            ("cus_b", ["action"], []),
        ]
        assert all((b, a) == ([], ["action"]) for c, b, a in replayed if c.startswith("cus_n"))
        n = len(newcomers)
        wait_until(lambda: len(newcomers) > n + 3, 30, "events after the swap", procs)
    finally:  # a failing assertion must not leave the publisher running into later tests
        done.set()
        publisher.join(30)
    wait_until(lambda: caught_up(settings), 60, "the worker on the new version", procs)
    wait_until(lambda: entitlements(settings).get("cus_e") == (["action"], []), 30, "cus_e", procs)
    n = len(loop.answers["cus_a"])
    wait_until(lambda: len(loop.answers["cus_a"]) > n + 5, 30, "more searches", procs)
    loop.stopping.set()
    loop.join(10)

    assert loop.failures == []
    # cus_a's answer only ever changed from wrong (available) to right (not available)
    a = loop.answers["cus_a"]
    assert a[0] is True and a[-1] is False
    assert a == sorted(a, reverse=True), "cus_a flipped back after being fixed"
    assert entitlements(settings) == {
        "cus_a": ([], []),
        "cus_b": ([], []),
        "cus_c": ([], []),
        "cus_d": (["action"], []),
        "cus_e": (["action"], []),
        **{c: (["action"], []) for c in newcomers},
    }
    # every event is in the new version exactly once
    schema = query(settings, "SELECT schema_name FROM entitled.versions WHERE state='active'")
    active = schema[0][0]
    assert active != "entitled_v1"
    applied = query(
        settings, f"SELECT count(*), count(DISTINCT event_id) FROM {active}.processed_events"
    )
    assert applied == [(9 + len(newcomers), 9 + len(newcomers))]

    # rollback: the previous (wrong) version answers again, caught up with the new events
    _run(procs, "replay", "--rollback", "--yes")
    wait_until(lambda: caught_up(settings), 60, "the worker on the old version", procs)
    ent = entitlements(settings)
    assert ent["cus_a"] == (["action"], []) and ent["cus_e"] == (["action"], [])
    rolled = {c: (b, a) for c, b, a in _changes(settings, "rollback")}
    assert rolled["cus_a"] == rolled["cus_b"] == ([], ["action"])

    # per-customer rebuild with the fixed rules touches that customer only
    before = query(
        settings,
        "SELECT customer, updated_at FROM live.customer_entitlements"
        " WHERE customer <> 'cus_a' ORDER BY customer",
    )
    _run(procs, "replay", "--customer", "cus_a", "--yes")
    ent = entitlements(settings)
    assert ent["cus_a"] == ([], [])
    assert ent["cus_b"] == (["action"], [])  # still wrong: not rebuilt
    after = query(
        settings,
        "SELECT customer, updated_at FROM live.customer_entitlements"
        " WHERE customer <> 'cus_a' ORDER BY customer",
    )
    assert after == before
    assert _changes(settings, "rebuild") == [("cus_a", ["action"], [])]

    listing = _run(procs, "replay", "--list")
    assert "v1" in listing and "active" in listing


def test_replay_refuses_without_terminal_or_yes(settings: Settings, procs: Procs) -> None:
    p = procs.spawn("replay", name="replay-no-yes")
    assert p.popen is not None
    p.popen.wait(60)
    assert p.popen.returncode != 0
    assert "--yes" in p.tail()


def _ready(api: str) -> bool:
    try:
        return get(f"{api}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
