"""Session services (a real Kafka and PostgreSQL), per-test topics and databases, the tiers.

With `KAFKA_BOOTSTRAP_SERVERS` and `DATABASE_URL` in the environment the tests use those;
otherwise the session starts its own services in a private temporary home (the jar cache
stays the shared `~/.cache/entitled`) and wipes them at the end. Under pytest-xdist each
worker is a session of its own, so each has its own services: a test that stops Kafka or
Postgres disturbs only the tests of its own worker, which run after it. PostgreSQL starts
first and alone (`postgres_url`): the database tier never waits for a JVM. Never skips: if
the services cannot start, every test that needs them fails with the reason.

Tiers (marks set here from the fixtures a test uses, see `pytest_collection_modifyitems`):
`pure` (no service), `database` (PostgreSQL only), `integration` (Kafka, processes, Stripe
stand-ins), and `heavy` (tests/chaos, tests/scale). docs/testing.md says which command runs
which.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from hypothesis import settings as hypothesis_settings
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
from tests.support.db import migrate
from tests.support.keys import MASTER_KEY
from tests.support.localstripe import localstripe  # noqa: F401
from tests.support.processes import Procs
from tests.support.stripe_mock import stripe_mock  # noqa: F401
from tests.support.system import system  # noqa: F401

WEBHOOK_SECRET = "whsec_test_secret"

# `make test` draws a share of each property test's examples (tests.support.examples);
# `make test-long` (HYPOTHESIS_PROFILE=long) draws them all.
hypothesis_settings.register_profile("suite", print_blob=True)
hypothesis_settings.register_profile("long", print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))


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
def postgres_url(services_settings: Settings) -> str:
    """The session PostgreSQL (started here, without Kafka, unless given)."""
    s = services_settings
    if s.database_url:
        return s.database_url
    try:
        return svc.up_postgres(s, fast=True)
    except ServicesError as exc:
        pytest.fail(f"the local PostgreSQL cannot start:\n{exc}", pytrace=False)


@pytest.fixture(scope="session")
def services(services_settings: Settings, postgres_url: str) -> Endpoints:
    """Endpoints of the session Kafka and PostgreSQL (started here unless given)."""
    s = services_settings
    if s.kafka_bootstrap_servers and s.database_url:
        return Endpoints(s.kafka_bootstrap_servers, s.database_url)
    try:
        return svc.up(s, fast=True)
    except ServicesError as exc:
        pytest.fail(f"the local services cannot start:\n{exc}", pytrace=False)


def new_topic(bootstrap: str) -> str:
    """A fresh event topic `t.<uuid8>`: 8 partitions, configured as every process does."""
    name = f"t.{uuid.uuid4().hex[:8]}"
    topic = Settings(kafka_bootstrap_servers=bootstrap, topic=name, partitions=8)
    # A private loop in a thread: the test's own (session) loop is left alone.
    run_async(lambda: ensure_event_topic(topic))
    return name


@pytest.fixture
def topic(services: Endpoints) -> str:
    """A fresh event topic (`new_topic`)."""
    return new_topic(services.bootstrap)


@contextmanager
def fresh_database(server_url: str, prefix: str, template: str | None = None) -> Iterator[str]:
    """A new database on the server of `server_url` (a copy of `template` if given), dropped
    (forcibly) at the end; its URL."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(create)
    try:
        yield _with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def database_url(postgres_url: str) -> Iterator[str]:
    """A fresh empty database `t_<uuid8>`, dropped (forcibly) after the test."""
    with fresh_database(postgres_url, "t_") as url:
        yield url


@pytest.fixture(scope="session")
def migrated_template(postgres_url: str) -> Iterator[str]:
    """The name of a database migrated once per session, copied by `migrated_url`."""
    with fresh_database(postgres_url, "template_") as url:
        migrate(url)
        # CREATE DATABASE ... TEMPLATE needs the template without sessions: none is left.
        yield url.rsplit("/", 1)[1]


@pytest.fixture
def migrated_url(postgres_url: str, migrated_template: str) -> Iterator[str]:
    """A fresh database `t_<uuid8>` holding the migrated schema (version 1 active), copied
    from `migrated_template` rather than migrated per test; dropped after the test."""
    with fresh_database(postgres_url, "t_", template=migrated_template) as url:
        yield url


@pytest.fixture
def settings(
    services: Endpoints, services_settings: Settings, topic: str, database_url: str
) -> Settings:
    """Settings for one test: the session services, a fresh topic and a fresh database."""
    return settings_for(services, services_settings, topic, database_url)


def settings_for(
    services: Endpoints, services_settings: Settings, topic: str, database_url: str
) -> Settings:
    """The tests' settings over the session services, for `topic` and `database_url`."""
    return Settings(
        kafka_bootstrap_servers=services.bootstrap,
        database_url=database_url,
        topic=topic,
        webhook_secrets=(WEBHOOK_SECRET,),
        master_key=MASTER_KEY,
        keys_topic=f"{topic}.keys",
        home=services_settings.home,
        cache=services_settings.cache,
        # the session broker allows it (launcher/services/kafka.py): failover within 3 s
        kafka_session_timeout_s=2.0,
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
# A test using one of these (directly or through another fixture) needs more than PostgreSQL.
_INTEGRATION_FIXTURES = frozenset({"services", "procs", "system", "localstripe", "stripe_mock"})
_TIERS = ("heavy", "integration", "database", "pure")


def _tier(item: pytest.Item) -> str:
    here = Path(__file__).parent
    parts = Path(str(item.fspath)).relative_to(here).parts
    if parts and parts[0] in _HEAVY:
        return "heavy"
    names = set(getattr(item, "fixturenames", ()))
    if names & _INTEGRATION_FIXTURES or item.get_closest_marker("integration"):
        return "integration"
    if "postgres_url" in names:
        return "database"
    return "pure"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier (`-m "not heavy"`, `-m "pure or database"`), and run the
    modules with the slowest tier first: under pytest-xdist (`--dist loadscope`, one module
    per worker at a time) a long module started last would leave the other worker idle."""
    tiers: dict[Path, int] = {}
    for item in items:
        tier = _tier(item)
        if tier == "heavy":
            item.add_marker(pytest.mark.heavy)
        item.add_marker(getattr(pytest.mark, tier if tier != "heavy" else "integration"))
        module = Path(str(item.fspath))
        tiers[module] = min(tiers.get(module, len(_TIERS)), _TIERS.index(tier))
    items.sort(key=lambda item: tiers[Path(str(item.fspath))])  # stable: modules stay whole


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
