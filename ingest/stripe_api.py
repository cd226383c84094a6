"""Reading the Stripe API for backfill, reconcile, hydrate and refresh: one client, one rate
limit, raw JSON.

Pages and objects are returned as parsed JSON exactly as the API sent them (key order kept),
never as `StripeObject`s, because what we read goes into the log as Stripe's own JSON.

Why our own retries: stripe-python's `max_network_retries` retries connection errors, 409
and 5xx, but a 429 only when Stripe adds `Stripe-Should-Retry: true`; it never reads
`Retry-After`, and its retries bypass our rate limiter. So `StripeApi` retries 429, 5xx and
connection errors itself: each attempt takes a slot of the limiter and waits `Retry-After`
when the answer names one (else an exponential backoff). The library's own retries are off
by default.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import stripe

from entitled.logs import quiet_libraries
from entitled.settings import Settings
from ingest.errors import ConfigurationError

# Every process that talks to Stripe imports this module, whether or not it configures logging
# (`entitled.logs.QUIET`).
quiet_libraries()

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_MAX_RETRIES = 8
_MAX_BACKOFF_S = 30.0


class RateLimiter:
    """Spaces calls at least `1/rps` seconds apart (shared by every list of one run).

    A call that comes late does not earn credit for a burst later, nor does a wake-up that
    comes late: the limiter keeps an even pace, which is what Stripe's per-second limits
    reward.
    """

    def __init__(self, rps: float, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep):
        if rps <= 0:
            raise ValueError("rps must be positive")
        self.interval = 1.0 / rps
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait until the next call is allowed, then reserve the following slot."""
        async with self._lock:
            now = self._clock()
            if self._next is not None and self._next > now:
                await self._sleep(self._next - now)
                # from when we really woke: a late wake-up (a busy event loop) must not let
                # the callers queued behind us go in a burst to catch up with the schedule
                now = max(self._next, self._clock())
            self._next = now + self.interval


@dataclass(frozen=True)
class Page:
    """One list response: its objects, whether more follow, the API version it used, and
    when it was read: `read_at` is the second the request that got it was SENT (Unix
    seconds), the stamp of the snapshots made from it. Stripe read the objects at or after
    that second, never before: stamping the time the answer arrived made a snapshot look
    newer than a webhook that changed the object while the answer was on its way, and it
    then overwrote it (issue 19, point 1)."""

    data: list[dict[str, Any]]
    has_more: bool
    api_version: str | None
    read_at: int


@dataclass
class RequestLog:
    """What a `StripeApi` asked for: (path, starting_after) per page fetched, objects
    retrieved, and the answers retried (429, 5xx or a connection error)."""

    pages: list[tuple[str, str | None]] = field(default_factory=list)
    retrieved: list[str] = field(default_factory=list)
    rate_limited: int = 0
    server_errors: int = 0
    connection_errors: int = 0


@dataclass(frozen=True)
class Retrieved:
    """One object as the API sent it, the API version it is rendered in, and `read_at`: the
    second the request that read it was sent (see `Page`)."""

    obj: dict[str, Any]
    api_version: str | None
    read_at: int


def _retryable(exc: stripe.StripeError) -> bool:
    if isinstance(exc, stripe.RateLimitError | stripe.APIConnectionError):
        return True
    return exc.http_status is not None and exc.http_status >= 500


class StripeApi:
    """Async, rate-limited reads of Stripe list endpoints through stripe-python.

    `api_version` pins the `Stripe-Version` sent (default: stripe-python's own). Objects are
    rendered in that version, so snapshot events are labelled with it (or with the version
    the response names, when the server says which).
    """

    def __init__(
        self,
        api_key: str | None,
        *,
        base: str | None = None,
        rps: float = 20.0,
        api_version: str | None = None,
        max_network_retries: int = 0,
        limiter: RateLimiter | None = None,
        retries: int = _MAX_RETRIES,
    ) -> None:
        if not api_key:
            raise ConfigurationError("STRIPE_API_KEY is not set")
        self._http = stripe.HTTPXClient(timeout=80)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": base} if base else None,
            max_network_retries=max_network_retries,
            http_client=self._http,
            stripe_version=api_version,
        )
        self.api_version = api_version or stripe.api_version
        self.retries = retries
        self.limiter = limiter or RateLimiter(rps)
        self.log = RequestLog()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, rps: float | None = None, api_version: str | None = None
    ) -> StripeApi:
        """The client every stage builds: `STRIPE_API_KEY`, `STRIPE_API_BASE`, at most `rps`
        requests a second (default `ENTITLED_BACKFILL_RPS`), `ENTITLED_STRIPE_RETRIES`."""
        return cls(
            settings.stripe_api_key,
            base=settings.stripe_api_base,
            rps=rps or settings.backfill_rps,
            api_version=api_version,
            retries=settings.stripe_retries,
        )

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def get(self, path: str, params: Mapping[str, Any]) -> tuple[Any, str | None, int]:
        """GET `path`, return (parsed JSON body, API version of the response, the second the
        request that was answered was sent)."""
        attempt = 0
        while True:
            await self.limiter.acquire()
            sent_at = int(time.time())  # taken per attempt: a retry reads later
            try:
                resp = await self._client.raw_request_async("get", path, **params)
            except stripe.StripeError as exc:
                if not _retryable(exc):
                    raise
                attempt += 1
                if isinstance(exc, stripe.RateLimitError):
                    self.log.rate_limited += 1
                elif isinstance(exc, stripe.APIConnectionError):
                    self.log.connection_errors += 1
                else:
                    self.log.server_errors += 1
                if attempt > self.retries:
                    raise
                await asyncio.sleep(_retry_after(exc.headers, attempt))
                continue
            version = resp.headers.get("stripe-version") if resp.headers else None
            return orjson.loads(resp.body), version or self.api_version, sent_at

    async def retrieve(self, path: str, params: Mapping[str, Any] | None = None) -> Retrieved:
        """GET one object (`/v1/subscriptions/sub_...`, with `expand` in `params` if needed)."""
        body, version, read_at = await self.get(path, params or {})
        self.log.retrieved.append(path)
        if not isinstance(body, dict):
            raise stripe.APIError(f"{path} answered a JSON {type(body).__name__}, not an object")
        return Retrieved(body, version, read_at)

    async def page(
        self, path: str, params: Mapping[str, Any], starting_after: str | None, limit: int
    ) -> Page:
        """One page of a list endpoint after `starting_after` (None: the first page)."""
        query = {**params, "limit": limit}
        if starting_after is not None:
            query["starting_after"] = starting_after
        body, version, read_at = await self.get(path, query)
        self.log.pages.append((path, starting_after))
        return Page(
            data=list(body.get("data") or []),
            has_more=bool(body.get("has_more")),
            api_version=version,
            read_at=read_at,
        )

    async def pages(
        self,
        path: str,
        params: Mapping[str, Any],
        *,
        starting_after: str | None = None,
        limit: int = 100,
    ) -> AsyncIterator[Page]:
        """Every page of a list endpoint, from `starting_after` on."""
        while True:
            page = await self.page(path, params, starting_after, limit)
            yield page
            if not page.has_more or not page.data:
                return
            starting_after = page.data[-1]["id"]


def _retry_after(headers: Mapping[str, str] | None, attempt: int) -> float:
    value = (headers or {}).get("retry-after") or (headers or {}).get("Retry-After")
    try:
        if value is not None:
            return min(max(float(value), 0.0), _MAX_BACKOFF_S)
    except ValueError:
        pass  # an HTTP date or garbage: fall back to exponential backoff
    return min(0.5 * 2.0 ** (attempt - 1), _MAX_BACKOFF_S)
