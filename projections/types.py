"""Types shared by the projection modules and their callers.

`Message` is what a consumer (the Faust agent, replay's reader, the dead-letter release) hands
to the writer: one record of the event topic, nothing Kafka-specific.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = ["JsonObject", "Message", "Metadata", "Position"]

JsonObject: TypeAlias = dict[str, Any]
# Metadata as sorted (key, value) pairs: hashable, so rows stay frozen and comparable.
Metadata: TypeAlias = tuple[tuple[str, str], ...]
Position: TypeAlias = tuple[int, int]  # (partition, offset)


@dataclass(frozen=True, slots=True)
class Message:
    """One record read from the topic: all the writer needs of it."""

    partition: int
    offset: int
    key: str | None
    value: bytes
    # Unix seconds of the record's `received-at` header, when the consumer read it: only the
    # worker's lag gauge uses it; the writer never does.
    received_at: float | None = None
    # Its data key was deleted (the customer was forgotten): the writer counts it, moves
    # the checkpoint past it and folds nothing; never a dead letter, never parks anyone.
    forgotten: bool = False
    # Its data key never reached the keys topic (the key's write failed: its writer was
    # refused and wrote the event again under another key): counted as an orphan, passed
    # as a forgotten record is.
    orphan: bool = False
    # The id of the data key its value was sealed with (None: written unencrypted, or not
    # from the log): the writer checks it against the erased keys in its transaction
    # (`projections.erasure.screen`), whatever this process's keyring has seen yet.
    key_id: str | None = None

    @property
    def unread(self) -> bool:
        """Passed unread: forgotten or an orphan."""
        return self.forgotten or self.orphan

    @property
    def position(self) -> Position:
        return (self.partition, self.offset)
