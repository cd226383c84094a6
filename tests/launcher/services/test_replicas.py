"""Streaming replicas of the local PostgreSQL (`entitled services up --replicas N`), against
real processes in a private home: one primary and two replicas for the module."""

from __future__ import annotations

import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from entitled.settings import Settings
from launcher import services as svc
from launcher.services.cli import services as services_cli
from tests.support.polling import wait_until

# It starts a Kafka and a PostgreSQL of its own: the integration tier.
pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Cluster:
    settings: Settings
    primary: str
    replicas: tuple[str, ...]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    home = Path(tempfile.mkdtemp(prefix="ent-rep-"))
    home.chmod(home.stat().st_mode | stat.S_IXOTH)  # the postgres user must get through
    settings = Settings(home=home)
    try:
        resolved = svc.resolve(settings, need_kafka=False, need_postgres=True)
        assert resolved.database_url
        urls = svc.up_replicas(settings, 2)
        yield Cluster(settings, resolved.database_url, urls)
    finally:
        svc.down(settings, wipe=True)
        shutil.rmtree(home, ignore_errors=True)


def _count(url: str) -> int | None:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM rep_probe").fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row else None


def _replayed(url: str, expected: int | None) -> Callable[[], bool]:
    return lambda: _count(url) == expected


def _write(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS rep_probe (n int)")
        conn.execute("INSERT INTO rep_probe SELECT generate_series(1, %s)", (rows,))


def test_replicas_stream_the_primary_and_refuse_writes(cluster: Cluster) -> None:
    assert len(set(cluster.replicas)) == 2 and cluster.primary not in cluster.replicas
    _write(cluster.primary, 10)
    expected = _count(cluster.primary)
    for url in cluster.replicas:
        wait_until(_replayed(url, expected), 30, f"replica {url} to replay")
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            assert row == (True,)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("INSERT INTO rep_probe VALUES (1)")


def test_status_shows_each_replica_with_its_lag(cluster: Cluster) -> None:
    def streaming() -> bool:
        report = svc.status(cluster.settings)["replicas"]
        return len(report) == 2 and all(r["streaming"] == "streaming" for r in report)

    wait_until(streaming, 30, "both replicas streaming")
    report = svc.status(cluster.settings)["replicas"]
    assert [r["index"] for r in report] == [1, 2]
    for r in report:
        assert r["healthy"] is True
        assert isinstance(r["lag_bytes"], int) and r["lag_bytes"] >= 0
        assert isinstance(r["lag_seconds"], float) and r["lag_seconds"] >= 0.0
        assert r["database_url"] in cluster.replicas
    out = CliRunner().invoke(
        services_cli, ["status"], env={"ENTITLED_HOME": str(cluster.settings.home)}
    )
    assert out.exit_code == 0, out.output
    assert "replica 1:" in out.output and "replica 2:" in out.output
    assert "streaming streaming" in out.output


def test_up_again_reuses_the_replicas(cluster: Cluster) -> None:
    before = {r["index"]: (r["pid"], r["port"]) for r in svc.status(cluster.settings)["replicas"]}
    assert svc.up_replicas(cluster.settings, 2) == cluster.replicas
    after = {r["index"]: (r["pid"], r["port"]) for r in svc.status(cluster.settings)["replicas"]}
    assert after == before and all(pid for pid, _ in after.values())


def test_a_stopped_replica_catches_up_when_restarted(cluster: Cluster) -> None:
    _write(cluster.primary, 1)
    svc.stop_replica(cluster.settings, 2)
    assert _count(cluster.replicas[1]) is None
    _write(cluster.primary, 500)
    expected = _count(cluster.primary)
    wait_until(lambda: _count(cluster.replicas[0]) == expected, 30, "replica 1 to replay")
    svc.start_replica(cluster.settings, 2)
    wait_until(lambda: _count(cluster.replicas[1]) == expected, 30, "replica 2 to catch up")


def test_down_stops_the_replicas_and_up_restarts_them(cluster: Cluster) -> None:
    svc.down(cluster.settings)
    report = svc.status(cluster.settings)["replicas"]
    assert [r["pid"] for r in report] == [None, None]
    assert all(_count(url) is None for url in cluster.replicas)
    svc.resolve(cluster.settings, need_kafka=False, need_postgres=True)
    assert svc.up_replicas(cluster.settings, 2) == cluster.replicas
    expected = _count(cluster.primary)
    assert expected
    for url in cluster.replicas:
        wait_until(_replayed(url, expected), 30, f"replica {url} back")
