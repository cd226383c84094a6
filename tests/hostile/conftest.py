"""Fixtures of the hostile-input tests: real `entitled` processes whose logs show on failure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from entitled.settings import Settings
from tests.processes import Procs


@pytest.fixture
def procs(settings: Settings, tmp_path: Path) -> Iterator[Procs]:
    p = Procs(settings, tmp_path)
    yield p
    p.stop_all()
    print(p.report())  # pytest shows captured teardown output only when the test failed
