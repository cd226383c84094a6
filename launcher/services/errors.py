"""Errors of the local service launcher.

Every message says what is wrong and how to fix it: the CLI prints it as it is and exits
non-zero, and the test fixtures fail with it.
"""

from __future__ import annotations

__all__ = ["ServicesError"]


class ServicesError(Exception):
    """The local Kafka or PostgreSQL cannot be prepared, started, stopped or reached."""

    __module__ = "launcher.services"
