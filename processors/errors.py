"""Errors of the processors package."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from processors.replay import ReplayReport

__all__ = ["ProcessorError", "ReplayError", "SwapRefused", "WriterStalled"]


class ProcessorError(Exception):
    """Base of every error raised by `processors`."""


class WriterStalled(ProcessorError):
    """Every event fails the same way (a bug in the writer, not bad input): folding stops
    loudly instead of dead-lettering the whole log."""


class ReplayError(ProcessorError):
    """A replay command cannot do what was asked (nothing to roll back to, a version that
    cannot be swapped in)."""


class SwapRefused(ReplayError):
    """The swap gate refused a new version (an empty log, or too many customers would lose
    entitlements). The version stays built, state `ready`; `report` holds the differences."""

    def __init__(self, report: ReplayReport) -> None:
        self.report = report
        super().__init__(report.refusal or "swap refused")
