"""Errors of the projections package: one base, one class per way a fold can fail."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from projections.model.events import StripeEvent

__all__ = ["EventParseError", "FoldError", "ProjectionError", "VersionError"]


class ProjectionError(Exception):
    """Base of every error raised by `projections`."""


class EventParseError(ProjectionError):
    """The bytes of a log message are not a Stripe event (bad JSON or missing envelope)."""


class FoldError(ProjectionError):
    """A fold rule raised on `event`; the caller dead-letters it and parks its customer.

    The rule's own exception is the `__cause__`.
    """

    def __init__(self, event: StripeEvent, message: str | None = None) -> None:
        self.event = event
        super().__init__(message or f"fold rule for {event.type} failed on {event.id}")


class VersionError(ProjectionError):
    """A projection version cannot be used as asked (none such, or the active one dropped)."""
