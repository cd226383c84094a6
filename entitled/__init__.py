"""The base every package (`ingest`, `processors`, `projections`, `api`, `launcher`) may import.

Modules: `settings` (one frozen `Settings` from the environment), `logs` (process logging),
`topics` (Kafka administration: `ensure_event_topic` creates the event topic, one way for
every process). The `entitled` command, `entitled dev` and the local service launcher live
on top of the stages, in `launcher`, which no stage imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from entitled._exports import lazy_exports

__all__ = ["Settings", "TopicError", "end_offsets", "ensure_event_topic"]

# Type checkers see real imports (and so catch a misspelt name); at run time each name is
# imported on first use.
if TYPE_CHECKING:
    from entitled.settings import Settings
    from entitled.topics import TopicError, end_offsets, ensure_event_topic
else:
    __getattr__ = lazy_exports(
        __name__,
        {
            "Settings": "entitled.settings",
            "TopicError": "entitled.topics",
            "end_offsets": "entitled.topics",
            "ensure_event_topic": "entitled.topics",
        },
    )
