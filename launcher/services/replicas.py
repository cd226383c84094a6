"""Streaming replicas of the local PostgreSQL: hot standbys the read API can read from.

Each replica is a `pg_basebackup -R` copy of the primary (run as the `postgres` user when we
are root, like every server-side command), with its own port, data directory and log under
`services_dir/postgres-replicas/<n>/`. It streams the primary's WAL (`standby.signal` and
`primary_conninfo` written by `-R`) and answers read-only queries (hot standby). A replica
whose data directory is already there is reused: started again, not copied again.

The primary keeps `wal_keep_size` of WAL (`postgres._write_conf`) so that a replica stopped
for a while catches up by streaming, without a replication slot that would pin WAL for ever
on a throw-away cluster whose replica was forgotten.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import psycopg

from launcher.services import _process as proc
from launcher.services import postgres
from launcher.services.errors import ServicesError
from launcher.services.postgres import PostgresState

__all__ = ["ensure", "health", "name", "plan", "start", "stop", "url", "wipe"]

# Replay may wait this long for a conflicting read before cancelling it; a search is
# milliseconds, the swap's lock is short: waiting is the better trade than cancelling.
MAX_STANDBY_DELAY = "'30s'"
HBA_LINE = "host replication all 127.0.0.1/32 trust\n"

# The replica's view of its lag: 0 s when it replayed all it received (an idle primary
# writes nothing, and `now() - last replay` would grow for ever), else the age of the last
# replayed transaction.
_REPLICA_LAG_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn()
            THEN 0.0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END
"""
# The primary's view: bytes of WAL it wrote that the replica has not replayed yet.
_PRIMARY_LAG_SQL = """
SELECT application_name, state,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint
FROM pg_stat_replication
"""


def name(index: int) -> str:
    """The replica's `cluster_name`, which is also its `application_name` on the primary."""
    return f"entitled-replica-{index}"


def plan(
    services_dir: Path, index: int, *, fast: bool, tls_dir: str | None = None
) -> PostgresState:
    root = services_dir.absolute() / "postgres-replicas" / str(index)
    return {
        "tls_dir": tls_dir,  # the primary's: a replica serves TLS when its primary does
        "index": index,
        "port": proc.free_port(),
        "data_dir": str(root / "data"),
        "socket_dir": str(root / "run"),
        "log_file": str(services_dir.absolute() / "logs" / f"postgres-replica-{index}.log"),
        "pid": None,
        "fast": fast,
    }


def url(state: PostgresState, database: str = postgres.DATABASE) -> str:
    return postgres.url(state, database)


def _allow_replication(primary: PostgresState) -> None:
    """Make sure the primary's pg_hba lets a local walsender in (initdb -A trust does, but a
    cluster initialised otherwise may not); reload when it was added."""
    hba = Path(primary["data_dir"]) / "pg_hba.conf"
    lines = [line.split() for line in hba.read_text().splitlines()]
    if any(
        p[:2] in (["host", "replication"], ["hostssl", "replication"]) and "127.0.0.1/32" in p
        for p in lines
    ):
        return
    with hba.open("a") as fh:
        fh.write(HBA_LINE)
    cmd = [str(postgres.bin_dir() / "pg_ctl"), "reload", "-D", primary["data_dir"]]
    postgres._run(cmd, "pg_ctl reload of the primary")


def _base_backup(primary: PostgresState, state: PostgresState) -> None:
    data = Path(state["data_dir"])
    if data.exists():
        shutil.rmtree(data)  # a half-made copy (no PG_VERSION) from an interrupted backup
    for directory in (data.parent, Path(state["socket_dir"])):
        directory.mkdir(parents=True, exist_ok=True)
        postgres._give(directory)
    postgres._make_traversable(data)
    cmd = [str(postgres.bin_dir() / "pg_basebackup"), "-h", "127.0.0.1"]
    cmd += ["-p", str(primary["port"]), "-U", "postgres", "-D", str(data)]
    cmd += ["-R", "-X", "stream", "-c", "fast"]
    if state["fast"]:
        cmd.append("--no-sync")
    postgres._run(cmd, f"pg_basebackup into {data}")


def _write_conf(state: PostgresState) -> None:
    """The replica's own settings (the copy brought the primary's `entitled.conf`)."""
    settings = {
        "port": str(state["port"]),
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": f"'{state['socket_dir']}'",
        "max_connections": str(postgres.MAX_CONNECTIONS),  # at least the primary's
        "shared_buffers": "'128MB'",
        "cluster_name": f"'{name(state['index'])}'",
        "hot_standby": "on",
        # The primary keeps the rows a replica's running query still sees: no query is
        # cancelled because vacuum on the primary removed them.
        "hot_standby_feedback": "on",
        "max_standby_streaming_delay": MAX_STANDBY_DELAY,
        "wal_receiver_status_interval": "'1s'",
    }
    if state["fast"]:
        settings.update(postgres.FAST_SETTINGS)
    settings.update(postgres.tls_settings(state))
    postgres.install_certificate(state)
    path = Path(state["data_dir"]) / "entitled.conf"
    path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    postgres._give(path)


def start(primary: PostgresState, state: PostgresState) -> PostgresState:
    """Copy the primary once (the primary must be running), then start the replica and wait
    until it accepts read-only connections."""
    data = Path(state["data_dir"])
    pid = postgres._postmaster_pid(data)
    if pid is None:
        proc.require_free_port(state["port"], f"PostgreSQL replica {state['index']}")
        if not (data / "PG_VERSION").exists():
            if not postgres.running(primary):
                raise ServicesError("The local PostgreSQL must run before its replicas start.")
            _allow_replication(primary)
            _base_backup(primary, state)
        Path(state["socket_dir"]).mkdir(parents=True, exist_ok=True)
        postgres._give(Path(state["socket_dir"]))
        _write_conf(state)
        log = Path(state["log_file"])
        log.parent.mkdir(parents=True, exist_ok=True)
        log.touch()
        postgres._give(log)
        pg_ctl = str(postgres.bin_dir() / "pg_ctl")
        cmd = [pg_ctl, "start", "-w", "-t", "60", "-D", str(data), "-l", str(log)]
        postgres._run(cmd, f"pg_ctl start of replica {state['index']}", log)
        pid = postgres._postmaster_pid(data)
    state["pid"] = pid
    return state


def ensure(
    services_dir: Path, primary: PostgresState, current: list[PostgresState], count: int
) -> list[PostgresState]:
    """Replicas 1..`count` running (reusing the recorded ones); the list to record."""
    replicas = list(current)
    for index in range(len(replicas) + 1, count + 1):
        replicas.append(
            plan(
                services_dir, index, fast=bool(primary.get("fast")), tls_dir=primary.get("tls_dir")
            )
        )
    for state in replicas[:count]:
        start(primary, state)
    return replicas


def stop(state: PostgresState, *, kill: bool = False) -> None:
    postgres.stop(state, kill=kill)


def wipe(services_dir: Path) -> None:
    shutil.rmtree(services_dir.absolute() / "postgres-replicas", ignore_errors=True)


def _primary_lag(primary: PostgresState) -> dict[str, tuple[str, int | None]]:
    """application_name -> (walsender state, replay lag in bytes), as the primary sees it."""
    try:
        with psycopg.connect(postgres.url(primary, "postgres"), connect_timeout=3) as conn:
            rows = conn.execute(_PRIMARY_LAG_SQL).fetchall()
    except psycopg.Error:
        return {}
    return {str(n): (str(s), None if b is None else int(b)) for n, s, b in rows}


def _replica_lag(state: PostgresState) -> tuple[bool, float | None]:
    """(is a standby, replay lag in seconds), as the replica sees it; (False, None) if down."""
    try:
        with psycopg.connect(url(state, "postgres"), connect_timeout=3) as conn:
            row = conn.execute(_REPLICA_LAG_SQL).fetchone()
    except psycopg.Error:
        return False, None
    if row is None:
        return False, None
    return bool(row[0]), None if row[1] is None else float(row[1])


def health(primary: PostgresState | None, replicas: list[PostgresState]) -> list[dict[str, Any]]:
    """Each recorded replica: where it is, whether it answers, its replay lag."""
    seen = _primary_lag(primary) if primary and postgres.running(primary) else {}
    report = []
    for state in replicas:
        running = postgres.running(state)
        standby, lag_s = _replica_lag(state) if running else (False, None)
        sender, lag_bytes = seen.get(name(state["index"]), (None, None))
        report.append(
            {
                "index": state["index"],
                "name": name(state["index"]),
                "port": state["port"],
                "pid": postgres._postmaster_pid(Path(state["data_dir"])),
                "data_dir": state["data_dir"],
                "log_file": state["log_file"],
                "database_url": url(state),
                "healthy": running and standby,
                "streaming": sender,  # the primary's walsender state, None: not connected
                "lag_bytes": lag_bytes,
                "lag_seconds": lag_s,
            }
        )
    return report
