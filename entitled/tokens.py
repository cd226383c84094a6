"""Bearer tokens of the HTTP services: which tokens a request may carry for an access level,
and a constant-time check of the `Authorization` header against them.

Two levels: `read` (search, entitlements, the change feed) and `admin` (what changes state or
reveals every customer: catalogue writes, refresh, drift, forget, the customer list).
`ENTITLED_ADMIN_TOKEN` passes wherever the read token is required. Lives in the base so that
the read API (`api`) and the refresh route (`ingest`) judge requests the same way.
"""

from __future__ import annotations

import hmac
from typing import Literal

from entitled.settings import Settings

__all__ = ["Level", "accepted", "bearer", "matches", "required"]

Level = Literal["read", "admin"]


def accepted(settings: Settings, level: Level) -> tuple[str, ...]:
    """The tokens that grant `level`; empty when the level is open (no token configured).

    Admin: the admin token, or the read token when no admin token is set (one token then
    closes everything). Read: either token. A configured token never leaves a level open."""
    if level == "admin" and settings.admin_token:
        return (settings.admin_token,)
    return tuple(t for t in (settings.api_token, settings.admin_token) if t)


def required(settings: Settings) -> bool:
    """Whether any token is configured (the API is then not open to whoever reaches it)."""
    return bool(settings.api_token or settings.admin_token)


def matches(given: str | None, tokens: tuple[str, ...]) -> bool:
    """Whether `given` equals one of `tokens`, compared in constant time (every token is
    compared, so timing says neither which one matched nor how much of it)."""
    if given is None:
        return False
    raw = given.strip().encode()
    found = False
    for token in tokens:
        found |= hmac.compare_digest(raw, token.encode())
    return found


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None for another scheme."""
    scheme, _, given = (authorization or "").partition(" ")
    return given if scheme.lower() == "bearer" else None
