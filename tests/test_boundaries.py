"""The package boundaries, read from the source: which top-level package may import which.

The tree is the architecture (see docs/architecture.md): `entitled` is the base every stage
imports; `ingest`, `processors` and `projections` are the stages; `api` is the read service
over `projections`; `launcher` (the CLI, `entitled dev`, the local services, the event
factory) sits on top of all of them. `projections.model` is the pure model: no I/O library.
All SQL lives in `projections`: no other package holds a string that reads as a statement.
Imports under `if TYPE_CHECKING:` count too: a type-only import is still a dependency.
"""

from __future__ import annotations

import ast
import re
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
# A string that starts like a SQL statement (upper-case keyword, then a space or a line end).
SQL = re.compile(
    r"^\s*(SELECT|INSERT INTO|UPDATE|DELETE FROM|LISTEN|NOTIFY|CREATE|ALTER|DROP|TRUNCATE"
    r"|WITH \w+ AS|LOCK TABLE|COPY)(\s|$)"
)


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


def sql_strings(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every string literal (or f-string part) that reads as a SQL statement."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.match(node.value):
            yield node.lineno, node.value.strip().splitlines()[0]


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


# The local service launcher administers the PostgreSQL server itself (its database, a health
# probe, replication status of the local replicas), before any schema exists: not the
# project's data, so not projections' business.
SERVER_ADMINISTRATION = ROOT / "launcher" / "services"


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "projections"])
def test_all_sql_lives_in_projections(package: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line}: {text}"
        for path in sources(package)
        if SERVER_ADMINISTRATION not in path.parents
        for line, text in sql_strings(path)
    ]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The checker itself: a module that imports the launcher is reported."""
    probe = ROOT / "ingest" / "_boundary_probe.py"
    probe.write_text(
        "from launcher import cli\nimport psycopg\n"
        'Q = f"""\n    SELECT 1 FROM {T}"""\nNOT_SQL = "Select a customer"\n'
    )
    try:
        found = {m for _, m in imports(probe)}
        statements = [text for _, text in sql_strings(probe)]
    finally:
        probe.unlink()
    assert {"launcher", "psycopg"} <= found
    assert statements == ["SELECT 1 FROM"]
