"""Moved to `tests.support.system`; this name stays importable until every test uses it."""

from tests.support.system import System, system

__all__ = ["System", "system"]
