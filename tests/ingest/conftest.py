"""Fixtures of the ingest tests; the helpers live in `tests.support` (`serve`, `kafka`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from entitled.settings import Settings
from tests.support.serve import Running, running


@pytest.fixture
async def ingest_server(settings: Settings) -> AsyncIterator[Running]:
    async with running(settings) as r:
        yield r


@pytest.fixture
def small_settings(settings: Settings) -> Settings:
    return replace(settings, max_body_bytes=16 * 1024)
