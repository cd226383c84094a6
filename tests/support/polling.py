"""Waiting for a condition with a deadline, never sleeping as synchronisation.

`wait_until` polls a predicate until it returns something truthy (returned) and fails after
the timeout, with the log tails of the processes given (anything with a `report()`), so a
test that times out shows why. Its polls back off from 50 ms to 250 ms: a predicate that
asks Kafka and Postgres costs several ms of CPU, and the processes waited for need it more.
`async_wait_until` (in-process predicates, freshness measured to its 50 ms) does not.
`get` is the one HTTP client of the polls (`http_ok`, `metric`, the tests' own probes).
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import httpx

T = TypeVar("T")

# The longest pause between two polls (each pause is 1.5 times the one before).
MAX_INTERVAL_S = 0.25

# A top-level `httpx.get` builds a client, and with it an SSL context from certifi's bundle:
# ~45 ms of CPU per call, 20 times a second while a test polls. One client for every poll,
# without keep-alive, so each request still connects afresh as a top-level call does.
_HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))


def get(url: str, **kwargs: Any) -> httpx.Response:
    """`httpx.get(url, ...)` through the shared client (for probes and polls)."""
    return _HTTP.get(url, **kwargs)


class Reports(Protocol):
    """What can explain a timeout: the process set of a test, an `entitled dev` run."""

    def report(self) -> str: ...


class _Deadline:
    def __init__(self, timeout: float, what: str, procs: Reports | None) -> None:
        self.timeout = timeout
        self.what = what
        self.procs = procs
        self.at = time.monotonic() + timeout

    def check(self) -> None:
        """Raise once the deadline has passed."""
        if time.monotonic() <= self.at:
            return
        message = f"timed out after {self.timeout:.1f} s waiting for {self.what}"
        if self.procs is not None:
            message = f"{message}\n{self.procs.report()}"
        raise AssertionError(message)


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    what: str = "condition",
    procs: Reports | None = None,
    *,
    interval: float | None = None,
) -> T:
    """Call `predicate` until it returns a truthy value (returned); fail after `timeout` s.
    The pauses grow from 50 ms to `MAX_INTERVAL_S`; an `interval` given keeps every pause at
    that (a test that measures how soon something shows polls at the precision it needs)."""
    deadline = _Deadline(timeout, what, procs)
    pause = 0.05 if interval is None else interval
    longest = MAX_INTERVAL_S if interval is None else interval
    while not (value := predicate()):
        deadline.check()
        time.sleep(min(pause, max(0.0, deadline.at - time.monotonic())))
        pause = min(pause * 1.5, longest)
    return value


async def async_wait_until(
    predicate: Callable[[], T | Awaitable[T]], timeout: float = 30.0, what: str = "condition"
) -> T:
    """`wait_until` for async tests; `predicate` may be a plain or an async function."""
    deadline = _Deadline(timeout, what, None)
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        deadline.check()
        await asyncio.sleep(0.05)


def http_ok(url: str, api_key: str | None = None) -> bool:
    """GET `url` (as `api_key`, Stripe's way) answers 200; False while nothing listens."""
    auth = (api_key, "") if api_key else None
    try:
        return get(url, auth=auth, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def metric(url: str, series: str) -> float | None:
    """The value of `series` (a name with its labels, as Prometheus prints it, e.g.
    `entitled_worker_lag_events{partition="1"}`) on `url`/metrics; None if absent or
    while nothing listens."""
    try:
        text = get(f"{url}/metrics", timeout=3).text
    except httpx.HTTPError:
        return None
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def seconds_until(
    predicate: Callable[[], object], timeout: float, step: float = 0.05
) -> float | None:
    """Seconds until `predicate()` holds (None if it did not within `timeout`): a measure,
    for figures, not a synchronisation (that is `wait_until`)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if predicate():
                return round(time.monotonic() - start, 2)
        except Exception:  # a service briefly away: not yet
            pass
        time.sleep(step)
    return None
