"""Moved to `tests.support.serve` and `tests.support.kafka`; this name stays importable
until every test uses them."""

from tests.support.kafka import end_offsets, read_topic
from tests.support.serve import Running, running, serve

__all__ = ["Running", "end_offsets", "read_topic", "running", "serve"]
