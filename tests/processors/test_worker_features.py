"""Stripe Entitlements through a real worker, Kafka and Postgres: features of a product grant
its subscribers what their lookup keys name (ENTITLED_GRANTS), a feature added to a product
reaches existing subscribers without any customer event, and drift between Stripe's summary
and our derivation is reported, then clears when they agree."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from entitled.settings import Settings
from launcher import demo
from launcher.stripe import events as se
from launcher.stripe import features as sf
from tests.support.db import caught_up, entitlements
from tests.support.kafka import publish
from tests.support.polling import get, wait_until
from tests.support.ports import free_port
from tests.support.processes import Procs
from tests.support.system import ready


def _catalogue() -> list[dict[str, Any]]:
    return [
        se.event("product.created", se.product("prod_meta", groups="drama"), created=100),
        se.event("product.created", se.product("prod_feat"), created=100),
        sf.product_features_snapshot("prod_feat", ["group:action"], created=100),
        se.event(
            "customer.subscription.created",
            se.subscription("sub_m", customer="cus_m", items=[("price_m", "prod_meta")]),
            created=101,
        ),
        se.event(
            "customer.subscription.created",
            se.subscription("sub_f", customer="cus_f", items=[("price_f", "prod_feat")]),
            created=101,
        ),
    ]


def _drift(procs: Procs) -> list[dict[str, Any]]:
    status = procs.spawn("status", "--drift", "--json", name="drift")
    assert status.popen is not None
    assert status.popen.wait(60) == 0, status.tail()
    found: list[dict[str, Any]] = json.loads(status.log.read_text())["drift"]
    return found


@pytest.mark.parametrize(
    ("grants", "want"),
    [
        ("features", {"cus_f": (["action"], []), "cus_m": ([], [])}),
        ("metadata", {"cus_f": ([], []), "cus_m": (["drama"], [])}),
    ],
)
def test_grant_sources_decide_what_a_feature_grants(
    settings: Settings, procs: Procs, grants: str, want: dict[str, Any]
) -> None:
    procs.spawn("worker", ENTITLED_GRANTS=grants)
    publish(settings, _catalogue())
    wait_until(lambda: entitlements(settings) == want, 60, f"entitlements {want}", procs)
    wait_until(lambda: caught_up(settings), 60, "the worker to reach the log end", procs)
    assert entitlements(settings) == want


def test_a_feature_added_to_a_product_reaches_subscribers_and_drift_is_reported(
    settings: Settings, procs: Procs
) -> None:
    procs.spawn("worker", ENTITLED_GRANTS="features")
    publish(settings, _catalogue())
    wait_until(lambda: entitlements(settings).get("cus_f") == (["action"], []), 60, "action", procs)
    # no customer event: only the product's features change
    publish(
        settings,
        [sf.product_features_snapshot("prod_feat", ["group:action", "group:family"], created=200)],
    )
    wait_until(
        lambda: entitlements(settings).get("cus_f") == (["action", "family"], []),
        60,
        "the subscriber to gain the family group",
        procs,
    )
    # Stripe's summary (long ago: past the grace period) lacks family and names beta-ui
    publish(settings, [sf.summary_event("cus_f", ["group:action", "beta-ui"], created=300)])
    want = [
        {
            "customer": "cus_f",
            "only_ours": ["group:family"],
            "only_stripe": ["beta-ui"],
            "since": 300,
        }
    ]
    wait_until(lambda: _drift(procs) == want, 60, f"drift {want}", procs)
    port = free_port()
    procs.spawn("api", "--port", str(port), ENTITLED_API_TOKEN="t0k")
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: ready(url), 90, "api ready", procs)
    assert httpx.get(f"{url}/v1/drift").status_code == 401
    answer = httpx.get(f"{url}/v1/drift", headers={"Authorization": "Bearer t0k"})
    assert answer.status_code == 200 and answer.json() == {"grace_s": 300.0, "drift": want}
    assert "entitled_drift_customers 1.0" in httpx.get(f"{url}/metrics").text
    auth = {"Authorization": "Bearer t0k"}
    for movie_id, group in (("1", "family"), ("2", "drama")):
        body = {"title": f"Movie {movie_id}", "keywords": "", "groups": [group]}
        assert httpx.put(f"{url}/v1/movies/{movie_id}", json=body, headers=auth).status_code < 300
    found = httpx.get(
        f"{url}/v1/search", params={"customer": "cus_f", "feature": "group:family"}, headers=auth
    ).json()
    assert found["feature"] == "group:family"
    assert [(r["movie_id"], r["reason"]) for r in found["results"]] == [("1", "subscription")]
    held = httpx.get(
        f"{url}/v1/customers/cus_f/entitlements", headers={"Authorization": "Bearer t0k"}
    )
    assert held.status_code == 200
    assert held.json()["features"] == [
        {"lookup_key": "beta-ui", "groups": [], "movie_ids": [], "from": [{"source": "summary"}]},
        {
            "lookup_key": "group:action",
            "groups": ["action"],
            "movie_ids": [],
            "from": [
                {"source": "features", "subscription": "sub_f", "product": "prod_feat"},
                {"source": "summary"},
            ],
        },
        {
            "lookup_key": "group:family",
            "groups": ["family"],
            "movie_ids": [],
            "from": [{"source": "features", "subscription": "sub_f", "product": "prod_feat"}],
        },
    ]
    asked = httpx.get(f"{url}/v1/drift?grace=0&limit=5", headers={"Authorization": "Bearer t0k"})
    assert asked.json() == {"grace_s": 0.0, "drift": want}
    # a disagreement younger than the grace period is not drift yet
    young = procs.spawn("status", "--drift", "--json", name="young", ENTITLED_DRIFT_GRACE_S="1e12")
    assert young.popen is not None and young.popen.wait(60) == 0, young.tail()
    assert json.loads(young.log.read_text())["drift"] == []
    # they agree: the drift clears
    publish(settings, [sf.summary_event("cus_f", ["group:action", "group:family"], created=400)])
    wait_until(lambda: _drift(procs) == [], 60, "the drift to clear", procs)
    wait_until(
        lambda: "entitled_drift_customers 0.0" in get(f"{url}/metrics").text,
        60,
        "the drift gauge to clear",
        procs,
    )


def test_the_demo_sells_a_package_through_a_feature(settings: Settings, procs: Procs) -> None:
    procs.spawn("worker")  # ENTITLED_GRANTS unset: every source
    publish(settings, demo.events())
    wait_until(
        lambda: entitlements(settings).get("cus_demo_dave") == (["scifi"], []),
        60,
        "dave to hold scifi through the feature",
        procs,
    )
    assert entitlements(settings)["cus_demo_alice"] == (["action"], [])
