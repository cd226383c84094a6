"""The launcher against real processes, in a private home (not the session services).

One up/down cycle for the module: the tests share it and the last one takes it down.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import psycopg
import pytest
from click.testing import CliRunner

from entitled.settings import Settings
from launcher import services as svc
from launcher.cli import KAFKA, POSTGRES, main, with_services
from launcher.services import Endpoints, ServicesError, kafka, postgres
from launcher.services.cli import services as services_cli

# It starts a Kafka and a PostgreSQL of its own: the integration tier.
pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Started:
    settings: Settings
    endpoints: Endpoints
    seconds: float


def _pids(report: dict[str, object]) -> list[int]:
    k = report["kafka"]
    p = report["postgres"]
    assert isinstance(k, dict) and isinstance(p, dict)
    return [n["pid"] for n in k["nodes"]] + [p["pid"]]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def started() -> Iterator[Started]:
    home = Path(tempfile.mkdtemp(prefix="ent-svc-"))
    home.chmod(home.stat().st_mode | stat.S_IXOTH)
    settings = Settings(home=home, cache=Settings().cache)
    try:
        t0 = time.monotonic()
        endpoints = svc.up(settings, fast=True)
        yield Started(settings, endpoints, time.monotonic() - t0)
    finally:
        svc.down(settings, wipe=True)
        shutil.rmtree(home, ignore_errors=True)


def test_up_is_idempotent(started: Started) -> None:
    before = svc.status(started.settings)
    again = svc.up(started.settings, fast=True)
    assert again == started.endpoints
    assert _pids(svc.status(started.settings)) == _pids(before)
    assert all(_pids(before))


def test_status_reports_healthy_services(started: Started) -> None:
    report = svc.status(started.settings)
    assert report["kafka"]["healthy"] is True
    assert report["kafka"]["bootstrap"] == started.endpoints.bootstrap
    assert report["postgres"]["healthy"] is True
    assert report["postgres"]["database_url"] == started.endpoints.database_url
    for log in [n["log_file"] for n in report["kafka"]["nodes"]] + [report["postgres"]["log_file"]]:
        assert Path(log).stat().st_size > 0


def test_second_start_reuses_the_jar_cache(
    started: Started, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = kafka.jar_dir(started.settings) / ".complete"
    mtime = marker.stat().st_mtime_ns
    # Only java on PATH: preparing again must not need Maven at all.
    java = shutil.which("java")
    assert java is not None
    (tmp_path / "java").symlink_to(java)
    monkeypatch.setenv("ENTITLED_PG_BIN", str(postgres.bin_dir()))  # found without PATH
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("mvn") is None
    svc.prepare(started.settings)
    assert marker.stat().st_mtime_ns == mtime


def test_taken_port_is_a_clear_error(started: Started) -> None:
    port = int(started.endpoints.database_url.rsplit(":", 1)[1].split("/")[0])
    svc.stop_postgres(started.settings)
    squatter = socket.socket()
    # Connections the health checks made may linger in TIME_WAIT on that port; a listener
    # (Postgres too) may bind over those, and it is the listener that takes the port.
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(ServicesError, match=rf"Port {port} .*taken.*down --wipe"):
            svc.start_postgres(started.settings)
    finally:
        squatter.close()
    svc.start_postgres(started.settings)  # same port once it is free again
    assert svc.status(started.settings)["postgres"]["healthy"] is True


def test_cli_status_and_errors(started: Started) -> None:
    env = {"ENTITLED_HOME": str(started.settings.home)}
    runner = CliRunner()
    ok = runner.invoke(services_cli, ["status"], env=env)
    assert ok.exit_code == 0, ok.output
    assert started.endpoints.bootstrap in ok.output and "healthy" in ok.output
    bad = runner.invoke(services_cli, ["up", "--brokers", "3"], env=env)
    assert bad.exit_code == 1
    assert "created with 1 broker(s), not 3" in bad.output
    assert "Traceback" not in bad.output


def _server_bin(directory: Path) -> Path:
    """A directory holding stand-ins for initdb, pg_ctl and postgres."""
    directory.mkdir(parents=True)
    for name in ("initdb", "pg_ctl", "postgres"):
        (directory / name).write_text("#!/bin/sh\n")
        (directory / name).chmod(0o755)
    return directory


def test_postgres_binaries_are_found_where_the_platform_puts_them(tmp_path: Path) -> None:
    """`pg_config --bindir`, then the initdb on PATH (through a symlink, as Homebrew and
    /usr/local/bin have it), then ENTITLED_PG_BIN; none of them: an error naming all three."""
    by_config = _server_bin(tmp_path / "config" / "bin")
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "pg_config").write_text(f"#!/bin/sh\necho {by_config}\n")
    (tools / "pg_config").chmod(0o755)
    assert postgres.bin_dir({"PATH": str(tools)}) == by_config

    on_path = _server_bin(tmp_path / "cellar" / "postgresql" / "bin")
    links = tmp_path / "links"
    links.mkdir()
    (links / "initdb").symlink_to(on_path / "initdb")
    assert postgres.bin_dir({"PATH": str(links)}) == on_path
    # a pg_config whose bindir lacks the server (a client-only install) is passed over
    (tools / "pg_config").write_text(f"#!/bin/sh\necho {tmp_path / 'client-only'}\n")
    assert postgres.bin_dir({"PATH": f"{tools}:{links}"}) == on_path

    explicit = _server_bin(tmp_path / "explicit")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"PATH": str(empty), "ENTITLED_PG_BIN": str(explicit)}
    assert postgres.bin_dir(env) == explicit

    with pytest.raises(ServicesError) as missing:
        postgres.bin_dir({"PATH": str(empty)})
    for named in ("pg_config --bindir", "PATH", "ENTITLED_PG_BIN"):
        assert named in str(missing.value)


def test_missing_binaries_say_how_to_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServicesError, match="`java` is not on PATH"):
        svc.prepare(Settings(home=tmp_path, cache=tmp_path / "cache"))


def test_stage_commands_get_the_local_services(
    started: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage command run through `entitled --local-services` without addresses sees the
    local services in its environment, only those it needs; `--help` resolves nothing."""
    monkeypatch.setenv("ENTITLED_HOME", str(started.settings.home))
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
        monkeypatch.setenv(name, "")  # restored after the test, whatever the shell sets

    seen: list[tuple[str | None, str | None]] = []

    @click.command()
    def probe() -> None:
        s = Settings.from_env()
        seen.append((s.kafka_bootstrap_servers, s.database_url))

    group = click.Group("stage", commands={"probe": probe})
    runner = CliRunner()
    helped = runner.invoke(with_services(group, frozenset({POSTGRES})), ["probe", "--help"])
    assert helped.exit_code == 0 and seen == []
    assert not os.environ["DATABASE_URL"]
    result = runner.invoke(
        with_services(group, frozenset({POSTGRES})), ["probe", "--local-services"]
    )
    assert result.exit_code == 0, result.output
    assert seen == [(None, started.endpoints.database_url)]
    result = runner.invoke(with_services(probe, frozenset({KAFKA, POSTGRES})), ["--local-services"])
    assert result.exit_code == 0, result.output
    assert seen[-1] == (started.endpoints.bootstrap, started.endpoints.database_url)


def test_stage_commands_start_nothing_unasked(tmp_path: Path) -> None:
    """Without an address and without --local-services a stage command exits 2 naming the
    variable, and starts nothing (an ingest on a throwaway broker would lose events)."""
    env = {"ENTITLED_HOME": str(tmp_path), "KAFKA_BOOTSTRAP_SERVERS": "", "DATABASE_URL": ""}
    runner = CliRunner()
    for argv, named, unnamed in (
        (["ingest"], "KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"),
        (["migrate"], "DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"),
        (["worker"], "KAFKA_BOOTSTRAP_SERVERS", None),
        (["replay", "--list"], "DATABASE_URL", None),
    ):
        result = runner.invoke(main, argv, env=env)
        assert result.exit_code == 2, (argv, result.output)
        assert named in result.output and "--local-services" in result.output
        assert unnamed is None or unnamed not in result.output
    assert not (tmp_path / "services").exists()


def test_entitled_migrate_finds_the_local_postgres(
    started: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
        monkeypatch.setenv(name, "")
    env = {"ENTITLED_HOME": str(started.settings.home)}
    result = CliRunner().invoke(main, ["--local-services", "migrate"], env=env)
    assert result.exit_code == 0, result.output
    with psycopg.connect(started.endpoints.database_url) as conn:
        row = conn.execute("SELECT to_regclass('entitled.versions') IS NOT NULL").fetchone()
    assert row == (True,)


def test_down_leaves_no_process(started: Started) -> None:
    # Last in the module: it ends the shared cycle.
    pids = _pids(svc.status(started.settings))
    svc.down(started.settings, wipe=True)
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists() and _alive(pid)]
    assert _processes_mentioning(str(started.settings.home)) == []
    assert not started.settings.services_dir.exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    return state != "Z"


def test_endpoints_honour_configured_services(tmp_path: Path) -> None:
    settings = Settings(
        kafka_bootstrap_servers="127.0.0.1:1",
        database_url="postgresql://postgres@127.0.0.1:2/x",
        home=tmp_path,
    )
    assert svc.endpoints(settings) == Endpoints(
        "127.0.0.1:1", "postgresql://postgres@127.0.0.1:2/x"
    )
    assert not settings.services_dir.exists()  # nothing was started
    with pytest.raises(ServicesError, match="entitled services up"):
        svc.stop_kafka(settings)
