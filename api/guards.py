"""What the read API refuses before a route runs: the wrong bearer token (per route: read or
admin), a `Host` it does not serve (DNS rebinding), and a state-changing request that is not
JSON (a cross-site form or `text/plain` POST needs no CORS preflight; `application/json`
does, so a page of another origin cannot send one).

Probes and scrapers reach `/healthz`, `/readyz` and `/metrics` by address (a pod IP, a
container name): those carry no customer data and skip the Host check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import APIError, Forbidden, Unauthorized
from entitled import tokens
from entitled.settings import Settings

__all__ = ["ContentTypeGuard", "HostGuard", "authorized", "header", "host_name", "refusal"]

Endpoint = Callable[[Request], Awaitable[Response]]

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def authorized(
    endpoint: Endpoint, level: tokens.Level = "read", *, query_token: bool = False
) -> Endpoint:
    """`endpoint`, answering 401 without a token of `level` (when one is configured) and 403
    to a read token on an admin route. `query_token` also accepts `?token=` (for an
    EventSource, which cannot send headers)."""

    async def guarded(request: Request) -> Response:
        settings: Settings = request.app.state.settings
        refused = refusal(
            settings,
            level,
            request.headers.get("authorization"),
            request.query_params.get("token") if query_token else None,
        )
        if refused is not None:
            raise refused
        return await endpoint(request)

    guarded.__name__ = endpoint.__name__
    guarded.level = level  # type: ignore[attr-defined]  # read by the OpenAPI test
    return guarded


def refusal(
    settings: Settings, level: tokens.Level, authorization: str | None, query_token: str | None
) -> APIError | None:
    """Why a request with this `Authorization` header (and `?token=`, where a route takes
    one) may not reach a route of `level`; None: it may."""
    wanted = tokens.accepted(settings, level)
    if not wanted:
        return None
    given = tokens.bearer(authorization)
    if given is None:
        given = query_token
    if tokens.matches(given, wanted):
        return None
    if tokens.matches(given, tokens.accepted(settings, "read")):
        return Forbidden("this needs the admin token (ENTITLED_ADMIN_TOKEN)")
    return Unauthorized("a valid bearer token is required")


def host_name(host_header: str) -> str:
    """The name of a `Host` header without its port, lower case (`[::1]:8001` -> `[::1]`)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    return host.partition(":")[0]


def _allowed(name: str, allowed: tuple[str, ...]) -> bool:
    for pattern in allowed:
        p = pattern.strip().lower()
        if p == "*" or p == name or (p.startswith("*.") and name.endswith(p[1:])):
            return True
    return False


async def _refuse(send: Send, status: int, message: str) -> None:
    body = orjson.dumps({"error": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> str:
    """A request header's value from the ASGI scope ("" when absent)."""
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


class HostGuard:
    """421 for a request whose `Host` is not in `allowed` (`*` allows any; `*.example.com`
    any subdomain). A rebinding page's requests carry the attacker's host name."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            name = host_name(header(scope, b"host"))
            if not _allowed(name, self.allowed):
                await _refuse(
                    send, 421, "this host name is not served here (see ENTITLED_ALLOWED_HOSTS)"
                )
                return
        await self.app(scope, receive, send)


class ContentTypeGuard:
    """415 for a state-changing request whose body is not declared `application/json`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in STATE_CHANGING:
            media = header(scope, b"content-type").partition(";")[0].strip().lower()
            if media != "application/json":
                await _refuse(
                    send, 415, "state-changing requests need Content-Type: application/json"
                )
                return
        await self.app(scope, receive, send)
