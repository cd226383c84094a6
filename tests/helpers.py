"""Moved to `tests.support`; this name stays importable until every test uses it."""

from tests.support.polling import async_wait_until as async_wait_for
from tests.support.polling import wait_until as wait_for
from tests.support.ports import free_port

__all__ = ["async_wait_for", "free_port", "wait_for"]
