"""The log in the order it was written, across partitions: how a replay's build reads it.

A replay's build records its version's history (`projections.history`), so it must fold the
log in the order the live worker saw it, not partition after partition: a product created
before a customer subscribed must be folded before the subscription, or the history would
show the subscription granting nothing and the group arriving later (or never). Each
partition is in order already; `InOrder` merges them by the records' Kafka timestamps (when
they were written, which is when the live worker could first fold them), partition then
offset breaking ties. The reader (`processors.replay.read_log(in_order=True)`) feeds it and
fetches again for the partitions it `needs`; it holds at most one fetch per partition.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection

from projections.types import Message

__all__ = ["InOrder"]


class InOrder:
    """Buffers of several partitions' records, released in timestamp order."""

    def __init__(self) -> None:
        self._buffers: dict[int, deque[tuple[int, Message]]] = {}

    def add(self, timestamp: int, message: Message) -> None:
        self._buffers.setdefault(message.partition, deque()).append((timestamp, message))

    def needs(self, unfinished: Collection[int]) -> list[int]:
        """The unfinished partitions with nothing buffered: fetch those before `take`
        can release anything (an older record may still come from them)."""
        return [p for p in unfinished if not self._buffers.get(p)]

    def pending(self) -> bool:
        return any(self._buffers.values())

    def take(self, limit: int, unfinished: Collection[int]) -> list[Message]:
        """Up to `limit` records, oldest first, while every unfinished partition has one
        buffered (then nothing older can come from it)."""
        out: list[Message] = []
        while len(out) < limit and not self.needs(unfinished):
            ready = [p for p, b in self._buffers.items() if b]
            if not ready:
                break
            p = min(ready, key=lambda q: (self._buffers[q][0][0], q))
            out.append(self._buffers[p].popleft()[1])
        return out
