"""Moved to `tests.support.localstripe`; this name stays importable until every test uses it."""

from tests.support.localstripe import API_KEY, localstripe

__all__ = ["API_KEY", "localstripe"]
