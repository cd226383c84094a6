"""InOrder: partitions merged by timestamp, never ahead of a partition it has not heard from."""

from __future__ import annotations

from processors.merged_log import InOrder
from projections.types import Message


def m(partition: int, offset: int) -> Message:
    return Message(partition, offset, f"k{partition}", b"{}")


def test_releases_in_timestamp_order_only_while_every_partition_has_one() -> None:
    merge = InOrder()
    merge.add(30, m(0, 0))
    merge.add(40, m(0, 1))
    assert merge.needs({0, 1}) == [1]
    assert merge.take(10, {0, 1}) == []  # partition 1 may still hold something older
    merge.add(10, m(1, 0))
    merge.add(35, m(1, 1))
    # 1:0 (10), 0:0 (30), 1:1 (35); then partition 1 is empty and unfinished: stop
    assert [x.position for x in merge.take(10, {0, 1})] == [(1, 0), (0, 0), (1, 1)]
    assert merge.needs({0, 1}) == [1]
    # partition 1 finished: the rest goes
    assert [x.position for x in merge.take(10, {0})] == [(0, 1)]
    assert not merge.pending()


def test_ties_by_partition_and_the_limit() -> None:
    merge = InOrder()
    for p in (1, 0):
        merge.add(5, m(p, 0))
        merge.add(5, m(p, 1))
    assert [x.position for x in merge.take(3, set())] == [(0, 0), (0, 1), (1, 0)]
    assert [x.position for x in merge.take(3, set())] == [(1, 1)]
