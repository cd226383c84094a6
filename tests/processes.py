"""Moved to `tests.support.processes`; this name stays importable until every test uses it."""

from tests.support.polling import wait_until
from tests.support.processes import ENTITLED, Proc, Procs, environment

__all__ = ["ENTITLED", "Proc", "Procs", "environment", "wait_until"]
