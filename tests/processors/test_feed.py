"""The worker's feed (processors/transport.py): what the agent takes from a fetch. Pure."""

from __future__ import annotations

import asyncio

from processors.transport import Feed


def test_take_returns_what_waits_up_to_max_and_holds_the_fetcher_back_past_the_limit() -> None:
    async def run() -> None:
        feed = Feed(limit=5)
        taker = asyncio.ensure_future(feed.take(3))
        await asyncio.sleep(0)
        assert not taker.done()  # nothing waits: the agent waits for the first record
        feed.put(range(6))
        assert await taker == [0, 1, 2]  # at most max_, in fetch order, no linger
        await asyncio.wait_for(feed.room(), 1)  # 3 wait, under the limit: room
        feed.put([6, 7])
        room = asyncio.ensure_future(feed.room())
        await asyncio.sleep(0)
        assert not room.done()  # 5 wait, the limit: the fetcher waits
        assert await feed.take(10) == [3, 4, 5, 6, 7]
        await asyncio.wait_for(room, 1)  # room again once the agent took them
        feed.put([7, 8])
        feed.clear()  # a rebalance: what waits is dropped, each partition is sought again
        assert len(feed) == 0

    asyncio.run(run())
