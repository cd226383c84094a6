"""Offsets: where each partition of the topic continues, in Postgres and in the consumer.

One concept, two sides. The checkpoint table of a projection version holds, per partition, the
next offset to fold; it is written in the same transaction as the rows a batch changed, so it
is the truth about what was applied. The consumer (Faust, replay's reader) only suggests what
to read; `continuity` keeps what continues exactly from the checkpoint and reports a gap
where the consumer skipped ahead (faust-streaming/faust#216, or a version swap to a version
that is behind); the consumer's side of the seeks made to close such gaps is
`processors.runner.Expected`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection, sql

from projections import schema as db
from projections.reads import Read
from projections.types import Message

__all__ = ["Continuity", "continuity", "in_order", "lock", "lock_read", "read", "save"]


@dataclass
class Continuity:
    """What of a batch continues from the checkpoints."""

    fresh: list[Message] = field(default_factory=list)  # to fold, in log order per partition
    below_checkpoint: int = 0  # already covered by the checkpoint (redelivered)
    gaps: dict[int, int] = field(default_factory=dict)  # partition -> offset to seek back to
    next_offsets: dict[int, int] = field(default_factory=dict)  # checkpoints to save


def in_order(messages: Iterable[Message]) -> list[Message]:
    """`messages` partition by partition (in the order each first appears), each by offset:
    the order of `Continuity.fresh`."""
    by_partition: dict[int, list[Message]] = defaultdict(list)
    for m in messages:
        by_partition[m.partition].append(m)
    return [m for batch in by_partition.values() for m in sorted(batch, key=_offset)]


def _offset(m: Message) -> int:
    return m.offset


def continuity(messages: Iterable[Message], checkpoint: Mapping[int, int]) -> Continuity:
    """Drop what `checkpoint` already covers; stop each partition at its first gap. Pure."""
    by_partition: dict[int, list[Message]] = defaultdict(list)
    for m in in_order(messages):
        by_partition[m.partition].append(m)
    out = Continuity()
    for partition, batch in by_partition.items():
        expected = start = checkpoint.get(partition, 0)
        for m in batch:
            if m.offset < expected:
                out.below_checkpoint += 1
                continue
            if m.offset > expected:
                out.gaps[partition] = expected  # apply nothing past it: the consumer seeks back
                break
            out.fresh.append(m)
            expected += 1
        if expected != start:
            out.next_offsets[partition] = expected
    return out


async def lock(
    conn: AsyncConnection[Any], schema: str, topic: str, partitions: Iterable[int]
) -> dict[int, int]:
    """The checkpoints of `partitions`, locked for this transaction (`lock_read`)."""
    return await lock_read(schema, topic, partitions).run(conn)


def lock_read(schema: str, topic: str, partitions: Iterable[int]) -> Read[dict[int, int]]:
    """The checkpoints of `partitions`, locked for this transaction.

    Two workers briefly owning one partition during a rebalance are serialised here, and the
    second one sees the first one's offsets.
    """
    return Read(
        sql.SQL(
            "SELECT partition, next_offset FROM {} WHERE topic = %s AND partition = ANY(%s)"
            " ORDER BY partition FOR UPDATE"
        ).format(db.qualified(schema, "checkpoints")),
        (topic, sorted(set(partitions))),
        _by_partition,
    )


def _by_partition(rows: list[Any]) -> dict[int, int]:
    return {p: o for p, o in rows}


async def read(conn: AsyncConnection[Any], schema: str, topic: str) -> dict[int, int]:
    """Every partition's next offset to fold in `schema` (absent: 0)."""
    cur = await conn.execute(
        sql.SQL("SELECT partition, next_offset FROM {} WHERE topic = %s").format(
            db.qualified(schema, "checkpoints")
        ),
        (topic,),
    )
    return {p: o for p, o in await cur.fetchall()}


async def save(
    conn: AsyncConnection[Any], schema: str, topic: str, next_offsets: Mapping[int, int]
) -> None:
    if not next_offsets:
        return
    # One statement, not executemany: inside a pipeline (`projections.reads`) executemany
    # ends with a sync of its own, a round trip.
    parts = sorted(next_offsets.items())
    await conn.execute(
        sql.SQL(
            "INSERT INTO {} (topic, partition, next_offset)"
            " SELECT %s, p, o FROM unnest(%s::int[], %s::bigint[]) AS c(p, o)"
            " ON CONFLICT (topic, partition) DO UPDATE"
            " SET next_offset = excluded.next_offset, updated_at = now()"
        ).format(db.qualified(schema, "checkpoints")),
        (topic, [p for p, _ in parts], [o for _, o in parts]),
    )
