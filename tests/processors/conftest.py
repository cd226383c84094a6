"""Fixtures of the processor tests: real worker processes whose logs show on failure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from entitled.settings import Settings
from tests.processes import Procs


@pytest.fixture
def procs(settings: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Procs]:
    p = Procs(settings, tmp_path)
    yield p
    p.stop_all()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(p.report())


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, "rep_" + rep.when, rep)
