"""The package boundaries, read from the source: which top-level package may import which.

The tree is the architecture (see docs/architecture.md): `entitled` is the base every stage
imports; `ingest`, `processors` and `projections` are the stages; `api` is the read service
over `projections`; `launcher` (the CLI, `entitled dev`, the local services, the event
factory) sits on top of all of them. `projections.model` is the pure model: no I/O library.
Imports under `if TYPE_CHECKING:` count too: a type-only import is still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("entitled", "ingest", "processors", "projections", "api", "launcher")

# package -> top-level packages of this repository it must never import
FORBIDDEN: dict[str, frozenset[str]] = {
    "entitled": frozenset({"ingest", "processors", "projections", "api", "launcher"}),
    "ingest": frozenset({"processors", "projections", "api", "launcher"}),
    "projections": frozenset({"ingest", "processors", "api", "launcher"}),
    "processors": frozenset({"api", "launcher"}),
    "api": frozenset({"processors", "launcher"}),
    "launcher": frozenset(),
}
IO_LIBRARIES = frozenset({"psycopg", "psycopg_pool", "aiokafka", "faust", "starlette", "httpx"})


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield node.lineno, module


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_it_may(package: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sources(package)
        for line, module in imports(path)
        if module.split(".")[0] in FORBIDDEN[package]
    ]
    assert not bad, "\n".join(bad)


def test_the_pure_model_imports_no_io_library() -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sources("projections/model")
        for line, module in imports(path)
        if module.split(".")[0] in IO_LIBRARIES
        or (
            (module.startswith("projections.") and not module.startswith("projections.model"))
            and module not in {"projections.errors", "projections.types"}
        )
    ]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The checker itself: a module that imports the launcher is reported."""
    probe = ROOT / "ingest" / "_boundary_probe.py"
    probe.write_text("from launcher import cli\nimport psycopg\n")
    try:
        found = {m for _, m in imports(probe)}
    finally:
        probe.unlink()
    assert {"launcher", "psycopg"} <= found
