"""Dead letters: events the fold could not apply, and the customers parked behind them.

A poison event (a rule raises on it, it is not a Stripe event, or Postgres refuses what it
becomes) is kept here with its error, traceback and raw bytes; every later event of the same
key (customer) is kept here too, as `parked`, so no customer is built from a partial history.
`entitled deadletters retry|skip` releases them (`ProjectionStore.release`); a skipped event
stays skipped: no writer folds an event whose position has a `skipped` dead letter, not even a
replay or a one-customer rebuild.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection, sql

from projections import schema as db
from projections.model.plan import Held, Letter, id_and_type
from projections.reads import Read
from projections.types import Message
from projections.upserts import clean_text

__all__ = [
    "Held",
    "Letter",
    "held",
    "held_read",
    "id_and_type",
    "record",
    "rows",
    "take_for_release",
]

log = logging.getLogger(__name__)


async def held(
    conn: AsyncConnection[Any],
    schema: str,
    topic: str,
    messages: Sequence[Message],
    *,
    from_first_letter: bool = False,
) -> Held:
    """The keys of `messages` that are parked, and which of them were skipped (`held_read`)."""
    if not messages:
        return Held()
    return await held_read(schema, topic, messages, from_first_letter=from_first_letter).run(conn)


def held_read(
    schema: str, topic: str, messages: Sequence[Message], *, from_first_letter: bool = False
) -> Read[Held]:
    """The keys of `messages` (not empty) that are parked, and which of them were skipped.

    A parked key holds back all of its events in the live writer (they come after the poison);
    `from_first_letter` holds them back only from its first poison/parked offset on, for a
    rebuild that reads the key's history from the start.
    """
    keys = sorted({m.key or "" for m in messages})
    partitions = sorted({m.partition for m in messages})

    def decode(rows: list[Any]) -> Held:
        out = Held()
        for key, state, partition, offset in rows:
            if state == "skipped":
                out.skipped.add((partition, offset))
            else:
                out.park(key, offset if from_first_letter else -1)
        return out

    return Read(
        sql.SQL(
            'SELECT key, state, partition, "offset" FROM {}'
            " WHERE (key = ANY(%s) AND state IN ('poison', 'parked'))"
            "    OR (topic = %s AND state = 'skipped' AND partition = ANY(%s)"
            '        AND "offset" BETWEEN %s AND %s)'
        ).format(db.qualified(schema, "dead_letters")),
        (keys, topic, partitions, min(m.offset for m in messages), max(m.offset for m in messages)),
        decode,
    )


async def record(
    conn: AsyncConnection[Any], schema: str, topic: str, letters: Sequence[Letter], state: str
) -> None:
    """Insert dead letters (a position already recorded keeps its state)."""
    if not letters:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            sql.SQL(
                'INSERT INTO {} (key, topic, partition, "offset", event_id, event_type,'
                " state, error, traceback, raw) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                ' ON CONFLICT (topic, partition, "offset") DO NOTHING'
            ).format(db.qualified(schema, "dead_letters")),
            [
                (
                    clean_text(m.key or ""),
                    topic,
                    m.partition,
                    m.offset,
                    None if event_id is None else clean_text(event_id),
                    None if event_type is None else clean_text(event_type),
                    state,
                    None if exc is None else clean_text(f"{type(exc).__name__}: {exc}"),
                    None if exc is None else clean_text("".join(traceback.format_exception(exc))),
                    m.value,
                )
                for m, event_id, event_type, exc in letters
            ],
        )
    if state == "poison":
        for m, event_id, _t, exc in letters:
            log.error(
                "poison event %s at %s/%s (key %s) parked: %s",
                event_id,
                m.partition,
                m.offset,
                m.key,
                exc,
            )


async def take_for_release(
    conn: AsyncConnection[Any], schema: str, key: str, *, skip_poison: bool
) -> list[Message]:
    """Take `key`'s poison and parked events out of the dead letters, in log order, to fold
    them again (what fails again is recorded anew); `skip_poison` marks the poison skipped."""
    table = db.qualified(schema, "dead_letters")
    if skip_poison:
        await conn.execute(
            sql.SQL(
                "UPDATE {} SET state = 'skipped', resolved_at = now()"
                " WHERE key = %s AND state = 'poison'"
            ).format(table),
            (key,),
        )
    cur = await conn.execute(
        sql.SQL(
            'SELECT partition, "offset", key, raw FROM {}'
            " WHERE key = %s AND state IN ('poison', 'parked')"
            ' ORDER BY partition, "offset" FOR UPDATE'
        ).format(table),
        (key,),
    )
    messages = [Message(p, o, k, bytes(raw)) for p, o, k, raw in await cur.fetchall()]
    # Out of the dead-letter set first, so that the fold does not park them behind themselves.
    await conn.execute(
        sql.SQL("DELETE FROM {} WHERE key = %s AND state IN ('poison', 'parked')").format(table),
        (key,),
    )
    return messages


async def rows(
    conn: AsyncConnection[Any], schema: str, *, include_resolved: bool = False
) -> list[dict[str, Any]]:
    """Dead letters, open ones only unless `include_resolved`."""
    cur = await conn.execute(
        sql.SQL(
            'SELECT id, key, partition, "offset", event_id, event_type, state, error,'
            " created_at FROM {} WHERE %s OR state IN ('poison', 'parked')"
            ' ORDER BY key, partition, "offset"'
        ).format(db.qualified(schema, "dead_letters")),
        (include_resolved,),
    )
    names = [d.name for d in cur.description or ()]
    return [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]
