"""Waiting for a condition with a deadline, never sleeping as synchronisation.

`wait_until` polls a predicate until it returns something truthy (returned) and fails after
the timeout, with the log tails of the processes given (anything with a `report()`), so a
test that times out shows why.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import httpx

T = TypeVar("T")


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
    interval: float = 0.05,
) -> T:
    """Call `predicate` until it returns a truthy value (returned); fail after `timeout` s."""
    deadline = _Deadline(timeout, what, procs)
    while not (value := predicate()):
        deadline.check()
        time.sleep(interval)
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
        return httpx.get(url, auth=auth, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def metric(url: str, series: str) -> float | None:
    """The value of `series` (a name with its labels, as Prometheus prints it, e.g.
    `entitled_worker_lag_events{partition="1"}`) on `url`/metrics; None if absent or
    while nothing listens."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=3).text
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
