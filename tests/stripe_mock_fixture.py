"""Moved to `tests.support.stripe_mock`; this name stays importable until every test uses it."""

from tests.support.stripe_mock import API_KEY, BINARY, start, stripe_mock

__all__ = ["API_KEY", "BINARY", "start", "stripe_mock"]
