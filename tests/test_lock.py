"""requirements.lock and pyproject.toml agree: every requirement (runtime and the dev extra)
has a pinned line that satisfies it, and the lock pins exactly the dependency closure of those
requirements (nothing missing, nothing stale), as the installed packages' metadata declares
it."""

from __future__ import annotations

import tomllib
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support.processes import REPO

LOCK = REPO / "requirements.lock"


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [
        Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    ]


def pins() -> dict[str, Version]:
    pinned: dict[str, Version] = {}
    for raw in LOCK.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one `==`
        assert spec.operator == "==", line
        name = canonicalize_name(req.name)
        assert name not in pinned, f"{name} is pinned twice"
        pinned[name] = Version(spec.version)
    return pinned


def _applies(req: Requirement, extra: str = "") -> bool:
    if req.marker is None:
        return True
    env = {k: str(v) for k, v in default_environment().items()}
    return req.marker.evaluate({**env, "extra": extra})


def closure(roots: list[Requirement]) -> set[str]:
    """Every distribution `roots` pull in, with their extras, from the installed metadata."""
    seen: set[tuple[str, str]] = set()
    names: set[str] = set()
    todo = [r for r in roots if _applies(r)]  # children are filtered as they are found
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        for wanted in {""} | set(req.extras):
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            names.add(name)
            for dep in metadata.requires(req.name) or []:
                child = Requirement(dep)
                if _applies(child, wanted):
                    todo.append(child)
    return names


def test_every_requirement_is_pinned_within_its_bounds() -> None:
    pinned = pins()
    for req in project_requirements():
        if not _applies(req):
            continue
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req} is not in requirements.lock"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"requirements.lock pins {name}=={pinned[name]}, outside pyproject's {req}"
        )


def test_the_lock_pins_the_whole_closure_and_nothing_else() -> None:
    pinned = set(pins())
    needed = closure(project_requirements())
    assert sorted(needed - pinned) == [], "needed but not pinned: regenerate requirements.lock"
    assert sorted(pinned - needed) == [], "pinned but needed by nothing: regenerate the lock"


def test_the_installed_versions_are_the_locked_ones() -> None:
    """This environment was installed from the lock (scripts/bootstrap)."""
    differ = {
        name: (str(version), metadata.version(name))
        for name, version in pins().items()
        if Version(metadata.version(name)) != version
    }
    assert differ == {}, differ


def test_bootstrap_and_the_image_install_from_the_lock() -> None:
    bootstrap = (REPO / "scripts" / "bootstrap").read_text()
    assert '-c "$here/requirements.lock"' in bootstrap
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "pip install -c requirements.lock ." in dockerfile
    # every package the `entitled` command imports is in the image
    for package in ("entitled", "ingest", "processors", "projections", "api", "launcher"):
        assert f"COPY {package} ./{package}" in dockerfile, package
