"""Two streaming replicas of the session's PostgreSQL, for tests of the read API on replicas
(`ENTITLED_READ_DATABASE_URL`); they stop with the session's services."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import pytest

from entitled.settings import Settings
from launcher import services as svc
from launcher.services import Endpoints


@pytest.fixture(scope="module")
def replicas(services: Endpoints, services_settings: Settings) -> tuple[str, ...]:
    """URLs of two streaming replicas of the session's PostgreSQL (started once, reused)."""
    return svc.up_replicas(services_settings, 2)


def on_replicas(replica_urls: tuple[str, ...], database_url: str) -> tuple[str, ...]:
    """The same database as `database_url` (a test's own) on each replica."""
    path = urlsplit(database_url).path
    return tuple(urlunsplit(urlsplit(r)._replace(path=path)) for r in replica_urls)
