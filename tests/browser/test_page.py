"""The WebFlicks page in Debian's chromium: Buy now turns into Watch now without a reload
when a subscription arrives through the real ingest, worker and API, announced over the
change feed's Server-Sent Events stream (the page does not poll). The API is closed (read and
admin tokens, as `entitled dev` runs it) and the page holds the read token only, given in the
link's fragment and kept in sessionStorage, never in localStorage or the address bar."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, Route, expect, sync_playwright

from launcher.stripe import events as se
from projections.catalog import read_file
from tests.support.processes import Procs
from tests.support.system import System, start_system

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEMO = Path(__file__).resolve().parents[2] / "projections" / "demo_catalog.jsonl"
READ, ADMIN = "tok_page_read_3e4f", "tok_page_admin_8a9b"


@pytest.fixture
def system(procs: Procs) -> System:
    return start_system(procs, catalog=False, ENTITLED_API_TOKEN=READ, ENTITLED_ADMIN_TOKEN=ADMIN)


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_subscription_turns_buy_into_watch(
    system: System,
    browser: Browser,
    tmp_path: Path,
) -> None:
    assert len(list(read_file(DEMO))) > 40
    loaded = system.run("catalog", "load", str(DEMO))
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr

    customer = se.customer(email="ana@webflicks.example", name="Ana Lima")
    assert system.post_event(se.event("customer.created", customer)).status_code == 200

    page = browser.new_page(viewport={"width": 1280, "height": 860})
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/v1/changes/stream" in r.url else None)
    page.goto(f"{system.api_url}/?customer={customer['id']}&q=harrison+ford#token={READ}")
    star_wars = page.locator('[data-movie-id="29"] .cta')  # scifi + action
    expect(star_wars).to_have_text("Buy now", timeout=15_000)
    assert page.evaluate("sessionStorage.getItem('entitled.read-token')") == READ
    assert page.evaluate("Object.keys(localStorage)") == []
    assert "token" not in page.url and READ not in page.url
    # Following the stream, its first re-read done: from here on, reads come only from it.
    expect(page.locator("body")).to_have_attribute("data-stream", "ready", timeout=15_000)
    assert any(f"customer={customer['id']}" in url for url in streams), streams
    page.screenshot(path=str(tmp_path / "before.png"))

    # From here on, a read of the customer's availability gets through only when it names,
    # as min_event, one of the events posted below: an id the page can only have learnt from
    # the stream's change event. Any other read (a poll) is refused and recorded, so the flip
    # can only come over the stream.
    ids: set[str] = set()
    passed: list[str] = []
    refused: list[str] = []

    def gate(route: Route) -> None:
        query = parse_qs(urlsplit(route.request.url).query)
        if query.get("min_event", [""])[0] in ids:
            passed.append(route.request.url)
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    page.route("**/v1/search?*", gate)
    page.route("**/v1/customers**", gate)
    product = se.product(groups="action", name="Action package")
    price = se.price(product=product["id"])
    sub = se.subscription(customer=customer["id"], items=[(price["id"], product["id"])])
    posted = [
        se.event("product.created", product),
        se.event("price.created", price),
        se.event("customer.subscription.created", sub),
    ]
    ids.update(evt["id"] for evt in posted)
    for evt in posted:
        response = system.post_event(evt)
        assert response.status_code == 200, response.text

    expect(star_wars).to_have_text("Watch now", timeout=60_000)
    expect(page.locator('[data-movie-id="25"] .cta')).to_have_text("Buy now")  # drama
    expect(page.locator("#summary")).to_contain_text("action", timeout=10_000)
    page.screenshot(path=str(tmp_path / "after.png"))

    assert refused == [], refused
    assert any(urlsplit(url).path == "/v1/search" for url in passed), passed
