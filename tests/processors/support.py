"""Moved to `tests.support.kafka` and `tests.support.db`; this name stays importable until
every test uses them."""

from tests.support.db import caught_up, entitlements, query
from tests.support.kafka import publish

__all__ = ["caught_up", "entitlements", "publish", "query"]
