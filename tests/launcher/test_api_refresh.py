"""`entitled api` as `api.cli` composes it: the read API with POST /v1/refresh mounted from
ingest. Write to Stripe (stripe-mock), refresh, read our own write: one request each."""

from __future__ import annotations

import httpx

from entitled.settings import Settings
from tests.support.polling import wait_until
from tests.support.ports import free_port
from tests.support.processes import Procs
from tests.support.stripe_mock import API_KEY
from tests.support.system import ready


def test_refresh_then_read_your_write(settings: Settings, procs: Procs, stripe_mock: str) -> None:
    stripe = {"STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": stripe_mock}
    port = free_port()
    procs.spawn("worker")
    procs.spawn("api", "--port", str(port), **stripe)
    api = f"http://127.0.0.1:{port}"
    wait_until(lambda: ready(api), 60, "the api", procs)
    r = httpx.post(f"{api}/v1/refresh", json={"ids": ["cus_refreshed"]}, timeout=30)
    assert r.status_code == 200, r.text
    (entry,) = r.json()["events"]
    assert entry["id"] == "cus_refreshed" and entry["outcome"] == "written"
    # the snapshot is in the log; the read waits until the worker folded it
    read = httpx.get(
        f"{api}/v1/customers/cus_refreshed/entitlements",
        params={"min_event": entry["event_id"], "wait": 10},
        timeout=30,
    )
    assert read.status_code == 200, read.text
    assert read.json()["customer"] == "cus_refreshed"
    bad = httpx.post(f"{api}/v1/refresh", json={"ids": []}, timeout=30)
    assert bad.status_code == 400
