"""Fixtures of the reliability tests: real `entitled` processes whose logs show on failure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from entitled.settings import Settings
from tests.processes import Procs


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "heavy: real processes under faults or load (tests/chaos, tests/scale)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.heavy)


@pytest.fixture
def procs(settings: Settings, tmp_path: Path) -> Iterator[Procs]:
    p = Procs(settings, tmp_path)
    yield p
    p.stop_all()
    # pytest shows a test's captured teardown output only when it failed: exactly then.
    print(p.report())
