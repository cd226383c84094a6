"""Errors of the read API, each carrying the HTTP status it answers with.

`api.app` maps them (and the database's unavailability) to `{"error": "..."}` bodies
in one exception handler, so route code just raises.
"""

from __future__ import annotations

from entitled.errors import StatusError
from projections.errors import ProjectionError

__all__ = [
    "APIError",
    "BadRequest",
    "Forbidden",
    "NotFound",
    "ServiceUnavailable",
    "Unauthorized",
]


class APIError(ProjectionError, StatusError):
    """Base of every read API error; `status` is the HTTP status it maps to."""


class BadRequest(APIError):
    """A parameter or body the API refuses: fix the request, retrying will not help."""

    status = 400


class Unauthorized(APIError):
    """A token is configured and the request lacks a matching bearer token."""

    status = 401


class Forbidden(APIError):
    """A valid read token on a route that needs `ENTITLED_ADMIN_TOKEN`."""

    status = 403


class NotFound(APIError):
    status = 404


class ServiceUnavailable(APIError):
    """Postgres is unreachable or not migrated: retry later."""

    status = 503
