"""The rate limiter and the 429 backoff, on a fake clock (no network)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from ingest.stripe_api import RateLimiter, _retry_after


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_limiter_spaces_calls_at_the_configured_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(4.0, clock=clock, sleep=clock.sleep)
    times = []
    for _ in range(5):
        await limiter.acquire()
        times.append(clock.now)
    assert times == [1000.0, 1000.25, 1000.5, 1000.75, 1001.0]


async def test_limiter_does_not_wait_when_calls_are_already_slow() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10.0, clock=clock, sleep=clock.sleep)
    await limiter.acquire()
    clock.now += 1.0
    await limiter.acquire()
    clock.now += 0.05  # half the interval: the third call waits the other half
    await limiter.acquire()
    assert clock.sleeps == [pytest.approx(0.05)]


async def test_limiter_gives_no_burst_credit_after_idling() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2.0, clock=clock, sleep=clock.sleep)
    await limiter.acquire()
    clock.now += 60.0
    start = clock.now
    for _ in range(3):
        await limiter.acquire()
    assert clock.now - start == pytest.approx(1.0)  # 3 calls at 2/s: 0, 0.5, 1.0


async def test_concurrent_callers_share_one_pace() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10.0, clock=clock, sleep=clock.sleep)
    stamps: list[float] = []

    async def call() -> None:
        await limiter.acquire()
        stamps.append(clock.now)

    await asyncio.gather(*(call() for _ in range(4)))
    assert sorted(stamps) == pytest.approx([1000.0, 1000.1, 1000.2, 1000.3])


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_retry_after_header_wins_over_backoff() -> None:
    assert _retry_after({"retry-after": "3"}, attempt=1) == 3.0
    assert _retry_after({"Retry-After": "1000"}, attempt=1) == 30.0  # capped
    assert _retry_after({}, attempt=1) == 0.5
    assert _retry_after(None, attempt=3) == 2.0
    assert _retry_after({"retry-after": "soon"}, attempt=2) == 1.0


async def test_429_is_retried_after_retry_after() -> None:
    """A real HTTP server answering 429 twice, then a page."""
    from ingest.stripe_api import StripeApi

    answers = [
        (429, b'{"error": {"type": "rate_limit_error", "message": "slow down"}}'),
        (429, b'{"error": {"type": "rate_limit_error", "message": "slow down"}}'),
        (200, b'{"object": "list", "data": [{"id": "prod_1", "b": 1, "a": 2}], "has_more": false}'),
    ]
    paths: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        paths.append(head.split(b" ", 2)[1])
        status, body = answers.pop(0)
        writer.write(
            b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nRetry-After: 0\r\n"
            b"Stripe-Version: 2025-03-31.basil\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status, len(body), body)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    api = StripeApi("sk_test_x", base=f"http://127.0.0.1:{port}", rps=1000, max_network_retries=0)
    try:
        page = await api.page("/v1/products", {}, "prod_0", 10)
    finally:
        await api.close()
        server.close()
        await server.wait_closed()
    assert api.log.rate_limited == 2
    assert page.data == [{"id": "prod_1", "b": 1, "a": 2}]
    assert list(page.data[0]) == ["id", "b", "a"]  # key order as sent
    assert page.api_version == "2025-03-31.basil"
    assert len(paths) == 3
    assert all(b"starting_after=prod_0" in p and b"limit=10" in p for p in paths)


async def test_a_late_wake_up_does_not_let_the_queue_burst() -> None:
    """The event loop wakes a sleeper 0.3 s late: the calls behind it keep the pace from
    then on instead of going at once to catch up with the schedule."""
    clock = FakeClock()
    late = [0.3]

    async def sleep(seconds: float) -> None:
        clock.sleeps.append(seconds)
        clock.now += seconds + (late.pop() if late else 0.0)

    limiter = RateLimiter(10.0, clock=clock, sleep=sleep)
    stamps = []
    for _ in range(5):
        await limiter.acquire()
        stamps.append(clock.now)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(stamps)]
    assert gaps[0] == 0.4  # the late wake-up itself
    assert gaps[1:] == [0.1, 0.1, 0.1]
