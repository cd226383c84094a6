"""Load for the reliability tests (chaos, scale-out, hostile input).

- `Poster`: posts signed events to one or more ingest URLs from a background thread at a
  steady rate and retries every non-200 with backoff, as Stripe does; remembers which
  event ids were answered 200.
- `SearchLoop`: searches the read API in a loop from a background thread, recording the
  time and status of every answer.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from tests.support.system import signed


class Poster:
    """Posts `events` in order at `rate` per second (at most `concurrency` in flight) to
    `urls` in turn; a non-200 is retried with backoff (another URL next time) until
    `give_up_s` after the first try. 4xx answers are not retried: they are bugs."""

    def __init__(
        self,
        urls: Sequence[str],
        events: Sequence[Mapping[str, Any]],
        secret: str,
        rate: float,
        *,
        concurrency: int = 32,
        give_up_s: float = 120.0,
        overall_s: float | None = None,
    ) -> None:
        self.urls = [f"{u}/webhooks/stripe" for u in urls]
        self.events = events
        self.secret = secret
        self.rate = rate
        self.concurrency = concurrency
        self.give_up_s = give_up_s
        # After this long from the start, failures are no longer retried: a broken ingest
        # must fail the test, not hang it.
        self.overall_s = overall_s if overall_s is not None else len(events) / rate + 120.0
        self._begun = 0.0
        self.acked: dict[str, float] = {}  # event id -> monotonic time of its 200
        self.acked_by_url: Counter[str] = Counter()
        self.last_ack = 0.0  # monotonic time of the latest 200
        self.statuses: Counter[str] = Counter()
        self.rejected: list[tuple[str, int, str]] = []  # (event id, status, body): 4xx
        self.gave_up: list[str] = []
        self.latencies: list[float] = []
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> Poster:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Start posting no more events (those started are still delivered or given up)."""
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the poster did not finish within {timeout:.0f} s")

    @property
    def settled(self) -> int:
        return len(self.acked) + len(self.rejected) + len(self.gave_up)

    async def _main(self) -> None:
        sem = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency + 4)
        tasks: set[asyncio.Task[None]] = set()
        try:
            async with httpx.AsyncClient(timeout=30, limits=limits) as client:
                begun = self._begun = time.monotonic()
                for i, event in enumerate(self.events):
                    if self._stop.is_set():
                        break
                    delay = begun + i / self.rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await sem.acquire()
                    task = asyncio.create_task(self._deliver(client, i, event, sem))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await asyncio.gather(*tasks)
        finally:
            self.done.set()

    async def _deliver(
        self, client: httpx.AsyncClient, i: int, event: Mapping[str, Any], sem: asyncio.Semaphore
    ) -> None:
        try:
            first = time.monotonic()
            for attempt in range(10_000):
                url = self.urls[(i + attempt) % len(self.urls)]
                body, headers = signed(event, self.secret)
                started = time.monotonic()
                try:
                    r = await client.post(url, content=body, headers=headers)
                    status, text = str(r.status_code), r.text
                except httpx.HTTPError as exc:
                    status, text = type(exc).__name__, str(exc)
                self.statuses[status] += 1
                if status == "200":
                    self.latencies.append(time.monotonic() - started)
                    self.acked[event["id"]] = self.last_ack = time.monotonic()
                    self.acked_by_url[url] += 1
                    return
                if status.startswith("4"):
                    self.rejected.append((event["id"], int(status), text[:200]))
                    return
                now = time.monotonic()
                if now - first > self.give_up_s or now - self._begun > self.overall_s:
                    self.gave_up.append(event["id"])
                    return
                await asyncio.sleep(min(0.2 * 2**attempt, 3.0) * (0.5 + random.random()))
        finally:
            sem.release()


class SearchLoop:
    """GET /v1/search at `rate` per second until stopped, on `api_url` or on several read
    APIs in turn (a small round robin); `answers` holds (monotonic time, status) with status
    -1 for a connection failure, `by_url` the same with the URL asked. `drop(url)` takes a
    URL out of the rotation (what a load balancer does with a copy that died)."""

    def __init__(
        self, api_url: str | Sequence[str], customers: Sequence[str], rate: float = 10.0
    ) -> None:
        self.urls = [api_url] if isinstance(api_url, str) else list(api_url)
        self.api_url = self.urls[0]
        self.customers = list(customers) or ["cus_nobody"]
        self.rate = rate
        self.answers: list[tuple[float, int]] = []
        self.by_url: list[tuple[float, str, int]] = []
        self.bodies_5xx: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SearchLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def drop(self, url: str) -> None:
        self.urls = [u for u in self.urls if u != url]

    def add(self, url: str) -> None:
        self.urls = [*self.urls, url]

    def _run(self) -> None:
        rng = random.Random(5)
        words = ["harrison ford", "desert", "christmas", "", "jones & !", "space"]
        turn = 0
        with httpx.Client(timeout=10) as client:
            while not self._stop.wait(1 / self.rate):
                urls = self.urls
                url = urls[turn % len(urls)]
                turn += 1
                params = {"customer": rng.choice(self.customers), "q": rng.choice(words)}
                try:
                    r = client.get(f"{url}/v1/search", params=params)
                    status = r.status_code
                    if status >= 500:
                        self.bodies_5xx.append(r.text[:300])
                except httpx.HTTPError:
                    status = -1
                now = time.monotonic()
                self.answers.append((now, status))
                self.by_url.append((now, url, status))
