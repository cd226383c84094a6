"""The base of the errors a stage answers over HTTP: each carries its status, and one
exception handler per app (ingest, api) turns it into an `{"error": "..."}` body, so route
code just raises. Messages are written for the caller and never contain a secret."""

from __future__ import annotations

__all__ = ["StatusError"]


class StatusError(Exception):
    """An error answered with HTTP `status` and `message` as the body's `error`."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
