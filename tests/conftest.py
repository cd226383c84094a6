"""Session services (a real Kafka and PostgreSQL) and per-test topics and databases.

With `KAFKA_BOOTSTRAP_SERVERS` and `DATABASE_URL` in the environment the tests use those;
otherwise the session starts its own services in a private temporary home (the jar cache
stays the shared `~/.cache/entitled`) and wipes them at the end. Never skips: if the
services cannot start, every test that needs them fails with the reason.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from entitled.settings import Settings
from entitled.topics import ensure_event_topic
from launcher import services as svc
from launcher.services import Endpoints, ServicesError
from launcher.services._process import run_async

# Fixtures defined in their own modules, offered to every test from here. The repository
# root is on sys.path (pytest's `pythonpath = ["."]`), so `tests.support` is importable by
# that name; the real `entitled` package there also wins over `tests/entitled/`, which,
# having no __init__.py, is only a namespace portion.
from tests.support.localstripe import localstripe  # noqa: F401
from tests.support.processes import Procs
from tests.support.stripe_mock import stripe_mock  # noqa: F401
from tests.support.system import system  # noqa: F401

WEBHOOK_SECRET = "whsec_test_secret"


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def services_settings() -> Iterator[Settings]:
    """The Settings that own the session services (for stop/start in fault tests)."""
    cache = Settings().cache
    env_kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    env_db = os.environ.get("DATABASE_URL")
    if env_kafka and env_db:
        home = Path(tempfile.mkdtemp(prefix="entitled-tests-"))
        yield Settings(
            kafka_bootstrap_servers=env_kafka, database_url=env_db, home=home, cache=cache
        )
        shutil.rmtree(home, ignore_errors=True)
        return
    home = Path(tempfile.mkdtemp(prefix="ent-"))
    # mkdtemp makes it 0700: the postgres system user must get through it.
    home.chmod(home.stat().st_mode | stat.S_IXOTH)
    settings = Settings(home=home, cache=cache)
    try:
        yield settings
    finally:
        try:
            svc.down(settings, wipe=True)
        finally:
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def services(services_settings: Settings) -> Endpoints:
    """Endpoints of the session Kafka and PostgreSQL (started here unless given)."""
    s = services_settings
    if s.kafka_bootstrap_servers and s.database_url:
        return Endpoints(s.kafka_bootstrap_servers, s.database_url)
    try:
        return svc.up(s, fast=True)
    except ServicesError as exc:
        pytest.fail(f"the local services cannot start:\n{exc}", pytrace=False)


@pytest.fixture
def topic(services: Endpoints) -> str:
    """A fresh event topic `t.<uuid8>`: 8 partitions, configured as every process does."""
    name = f"t.{uuid.uuid4().hex[:8]}"
    topic = Settings(kafka_bootstrap_servers=services.bootstrap, topic=name, partitions=8)
    # A private loop in a thread: the test's own (session) loop is left alone.
    run_async(lambda: ensure_event_topic(topic))
    return name


@pytest.fixture
def database_url(services: Endpoints) -> Iterator[str]:
    """A fresh empty database `t_<uuid8>`, dropped (forcibly) after the test."""
    name = f"t_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_database(services.database_url, name)
    finally:
        with psycopg.connect(services.database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def settings(
    services: Endpoints, services_settings: Settings, topic: str, database_url: str
) -> Settings:
    """Settings for one test: the session services, a fresh topic and a fresh database."""
    return Settings(
        kafka_bootstrap_servers=services.bootstrap,
        database_url=database_url,
        topic=topic,
        webhook_secrets=(WEBHOOK_SECRET,),
        home=services_settings.home,
        cache=services_settings.cache,
    )


@pytest.fixture
def procs(settings: Settings, tmp_path: Path) -> Iterator[Procs]:
    """Real `entitled` processes for one test, all stopped at its end."""
    p = Procs(settings, tmp_path)
    yield p
    p.stop_all()
    # pytest shows a test's captured teardown output only when it failed: exactly then.
    print(p.report())


_HEAVY = ("chaos", "scale")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests under tests/chaos and tests/scale `heavy` (deselect: -m "not heavy")."""
    here = Path(__file__).parent
    for item in items:
        parts = Path(str(item.fspath)).relative_to(here).parts
        if parts and parts[0] in _HEAVY:
            item.add_marker(pytest.mark.heavy)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--public-corpus",
        action="store_true",
        help="also run tests/public_corpus (the corpus: $ENTITLED_STRIPE_CORPUS)",
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """tests/public_corpus runs only when asked for (`make corpus`): its data lives outside
    this repository."""
    if collection_path.name == "public_corpus" and not config.getoption("--public-corpus"):
        return True
    return None
