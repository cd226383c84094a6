"""The consumer edge: a record's value opened with its data key before anything parses it.

Every reader of the event topic in this stage (the worker's agent, replay bulk and per
customer) turns records into `Message`s here, so what comes after (the runner, the writer,
the fold) sees raw webhook bodies, as if the log were not encrypted. A record whose data key
is gone becomes a `forgotten` message, one whose key never came an `orphan`: the writer
counts them and moves past them.

A record's key may reach the keys topic just after the record (writers send both at once:
docs/erasure.md, "Key order"): opening waits for it (`Keyring.open`, given the record's key
and timestamp). The batch being opened waits with it, other partitions of the batch too
(the batch commits as one); the key normally lands within the writer's produce round trip,
and only the orphan of a failed key write is waited for up to `key_wait_s` after it was
written.

Opening never raises into a Faust agent (it would acknowledge and skip the batch): a keys
topic that cannot be read, or a master key that no longer opens the keys (a rotation with
the new master key not configured here), is retried with backoff, loudly, until it works.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiokafka.errors import KafkaError

from entitled.crypto import CryptoError
from entitled.keyring import Keyring, record_time
from projections.types import Message

from .lag import received_at

__all__ = ["open_events", "open_message", "patiently"]

log = logging.getLogger(__name__)

Headers = Iterable[tuple[str, bytes]] | Mapping[str, bytes]


async def open_message(
    keyring: Keyring,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    received_at: float | None = None,
    *,
    timestamp_ms: int | None = None,
) -> Message:
    """One record as the writer takes it (`timestamp_ms`: its Kafka timestamp; every
    reader of the log gives it, else a key absent after one read of the keys topic is
    forgotten: `Keyring.open`); raises what `Keyring.open` raises."""
    subject = key.decode("utf-8", "replace") if key is not None else None
    opened = await keyring.open(
        value,
        headers,
        subject=subject or "",
        timestamp=None if timestamp_ms is None else record_time(timestamp_ms),
    )
    return Message(
        partition,
        offset,
        subject,
        opened.value,
        received_at,
        forgotten=opened.forgotten,
        key_id=opened.key_id,
        orphan=opened.orphan,
    )


async def patiently(
    opening: Callable[[], Awaitable[Message]], *, max_backoff_s: float = 5.0
) -> Message:
    """`opening()` (an `open_message`), retried with backoff until it works: for the live
    agent, which must never raise."""
    delay = 0.1
    while True:
        try:
            return await opening()
        except (CryptoError, KafkaError, OSError) as exc:
            log.error("cannot open a record: %s; again in %.1fs", exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_backoff_s)


async def open_events(keyring: Keyring, records: Iterable[Any]) -> list[Message]:
    """A batch of the agent's records (aiokafka `ConsumerRecord`s, from the transport's
    feed) as messages, each opened patiently: the worker's edge."""
    return [
        await patiently(
            functools.partial(
                open_message,
                keyring,
                r.partition,
                r.offset,
                r.key,
                r.value,
                r.headers,
                received_at(r.headers),
                timestamp_ms=r.timestamp,
            )
        )
        for r in records
    ]
