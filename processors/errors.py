"""Errors of the processors package."""

from __future__ import annotations

__all__ = ["ProcessorError", "WriterStalled"]


class ProcessorError(Exception):
    """Base of every error raised by `processors`."""


class WriterStalled(ProcessorError):
    """Every event fails the same way (a bug in the writer, not bad input): folding stops
    loudly instead of dead-lettering the whole log."""
