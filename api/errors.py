"""Errors of the read API, each carrying the HTTP status it answers with.

`api.app` maps them (and the database's unavailability) to `{"error": "..."}` bodies
in one exception handler, so route code just raises.
"""

from __future__ import annotations

from projections.errors import ProjectionError

__all__ = ["APIError", "BadRequest", "NotFound", "ServiceUnavailable", "Unauthorized"]


class APIError(ProjectionError):
    """Base of every read API error; `status` is the HTTP status it maps to."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(APIError):
    """A parameter or body the API refuses: fix the request, retrying will not help."""

    status = 400


class Unauthorized(APIError):
    """`ENTITLED_API_TOKEN` is set and the request lacks the matching bearer token."""

    status = 401


class NotFound(APIError):
    status = 404


class ServiceUnavailable(APIError):
    """Postgres is unreachable or not migrated: retry later."""

    status = 503
