"""The local PostgreSQL: the machine's own binaries, a private data directory and port.

PostgreSQL refuses to run as root, so when we are root every server-side command runs as
the `postgres` system user, and the directories it needs are handed to that user.

A cluster planned with `tls_dir` (`entitled services up --secure`) serves TLS (`ssl=on`) with
the local CA's server certificate, its URL asks for `sslmode=verify-full` against that CA, and
its pg_hba.conf refuses every TCP connection without TLS (`hostssl` only; `HBA_TLS_ONLY`), so
a client that ignored the URL's settings could not work at all, as with a managed Postgres
that enforces TLS. The unix socket (in the private `socket_dir`) stays open to local tools.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg

from entitled.settings import Settings
from launcher.services import _process as proc
from launcher.services import tls
from launcher.services.errors import ServicesError

DATABASE = "entitled"
SYSTEM_USER = "postgres"
MAX_CONNECTIONS = 300
# Durability traded for speed: only for throw-away test clusters (`up(fast=True)`).
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}

PostgresState = dict[str, Any]

# pg_hba.conf of a secure cluster: first match wins; TCP only with TLS (replication too: the
# replicas' base backup and WAL stream, which ask for TLS by libpq's default `prefer`).
HBA_TLS_ONLY = """\
# written by entitled (services up --secure): TCP connections only over TLS
local     all          all                 trust
hostssl   all          all   127.0.0.1/32  trust
hostssl   replication  all   127.0.0.1/32  trust
hostnossl all          all   0.0.0.0/0     reject
hostnossl replication  all   0.0.0.0/0     reject
"""


_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")


def _complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in _SERVER_BINARIES)


def _pg_config_bindir(path: str | None) -> Path | None:
    pg_config = shutil.which("pg_config", path=path)
    if pg_config is None:
        return None
    try:
        done = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(done.stdout.strip()) if done.stdout.strip() else None


def bin_dir(env: Mapping[str, str] | None = None) -> Path:
    """The PostgreSQL server binaries (initdb, pg_ctl, postgres): where `pg_config --bindir`
    says, else beside the `initdb` on PATH, else `ENTITLED_PG_BIN`; a ServicesError naming
    all three when none has them."""
    e = os.environ if env is None else env
    path = e.get("PATH")
    tried = []
    bindir = _pg_config_bindir(path)
    tried.append(f"`pg_config --bindir` ({bindir or 'no pg_config on PATH'})")
    if bindir is not None and _complete(bindir):
        return bindir
    initdb = shutil.which("initdb", path=path)
    # a symlink (/usr/local/bin/initdb, Homebrew's bin): its siblings are where it points
    beside = Path(initdb).resolve().parent if initdb else None
    tried.append(f"PATH ({beside or 'no initdb on PATH'})")
    if beside is not None and _complete(beside):
        return beside
    explicit = Path(e["ENTITLED_PG_BIN"]) if e.get("ENTITLED_PG_BIN") else None
    tried.append(f"ENTITLED_PG_BIN ({explicit or 'not set'})")
    if explicit is not None and _complete(explicit):
        return explicit
    raise ServicesError(
        f"PostgreSQL server binaries ({', '.join(_SERVER_BINARIES)}) not found; looked in: "
        + "; ".join(tried)
        + ". Install the PostgreSQL server (`apt-get install postgresql`, `dnf install "
        "postgresql-server`, `brew install postgresql@16`), or put its bin directory on PATH, "
        "or set ENTITLED_PG_BIN to it."
    )


def _as_root() -> bool:
    return os.geteuid() == 0


def _pg_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError as exc:
        raise ServicesError(
            "Running as root, PostgreSQL must run as the `postgres` system user, which does "
            "not exist. Run `apt-get install postgresql-15` (it creates the user)."
        ) from exc


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    """Run a server-side command, as the `postgres` user when we are root."""
    prefix = ["runuser", "-u", SYSTEM_USER, "--"] if _as_root() else []
    # cwd "/": the postgres user may not be allowed into the caller's working directory.
    done = subprocess.run([*prefix, *cmd], capture_output=True, text=True, cwd="/")
    if done.returncode != 0:
        tail = f"\n--- {log} ---\n{proc.log_tail(log)}" if log else ""
        raise ServicesError(
            f"{what} failed (exit {done.returncode}): {(done.stdout + done.stderr).strip()}"
            f"{tail}\nFix the cause above, or run `entitled services down --wipe` and retry."
        )


def _give(path: Path) -> None:
    """Hand `path` to the postgres user (when we are root)."""
    if _as_root():
        user = _pg_user()
        os.chown(path, user.pw_uid, user.pw_gid)


def _make_traversable(path: Path) -> None:
    """Let the postgres user reach `path` (e.g. under /root): add o+x to each parent."""
    if not _as_root():
        return
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def plan(settings: Settings, *, fast: bool, tls_dir: Path | None = None) -> PostgresState:
    root = settings.services_dir.absolute() / "postgres"
    return {
        "tls_dir": str(tls_dir) if tls_dir else None,
        "port": proc.free_port(),
        "data_dir": str(root / "data"),
        "socket_dir": str(root / "run"),
        "log_file": str(settings.services_dir.absolute() / "logs" / "postgres.log"),
        "pid": None,
        "fast": fast,
    }


def url(state: PostgresState, database: str = DATABASE) -> str:
    base = f"postgresql://postgres@127.0.0.1:{state['port']}/{database}"
    if not state.get("tls_dir"):
        return base
    ca = tls.Authority(Path(state["tls_dir"])).ca_file
    return f"{base}?sslmode=verify-full&sslrootcert={ca}"


def tls_settings(state: PostgresState) -> dict[str, str]:
    """`ssl=on` with the certificate `install_certificate` put in the data directory."""
    if not state.get("tls_dir"):
        return {}
    return {"ssl": "on", "ssl_cert_file": "'server.crt'", "ssl_key_file": "'server.key'"}


def install_certificate(state: PostgresState) -> None:
    """Copy the local CA's server certificate and key into the data directory, owned by the
    server's user (PostgreSQL refuses a key others can read)."""
    if not state.get("tls_dir"):
        return
    auth = tls.authority(Path(state["tls_dir"]))
    data = Path(state["data_dir"])
    for source, name in ((auth.cert_file, "server.crt"), (auth.key_file, "server.key")):
        target = data / name
        shutil.copyfile(source, target)
        target.chmod(0o600)
        _give(target)


def _postmaster_pid(data_dir: Path) -> int | None:
    """The running postmaster of `data_dir`; a stale pid file (say after a reboot) gives None."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    if proc.pid_alive(pid) and str(data_dir) in proc.pid_cmdline(pid):
        return pid
    return None


def running(state: PostgresState) -> bool:
    return _postmaster_pid(Path(state["data_dir"])) is not None


def _initdb(state: PostgresState) -> None:
    data = Path(state["data_dir"])
    if (data / "PG_VERSION").exists():
        return
    proc.refuse_foreign(data, "PostgreSQL")
    data.mkdir(parents=True, exist_ok=True)
    _give(data)
    data.chmod(0o700)
    cmd = [str(bin_dir() / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
    cmd += ["-E", "UTF8", "--locale=C"]
    if state["fast"]:
        cmd.append("--no-sync")
    _run(cmd, f"initdb of {data}")
    conf = data / "postgresql.conf"
    with conf.open("a") as fh:
        fh.write("\ninclude_if_exists = 'entitled.conf'\n")


def _write_conf(state: PostgresState) -> None:
    settings = {
        "port": str(state["port"]),
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": f"'{state['socket_dir']}'",
        "max_connections": str(MAX_CONNECTIONS),
        "shared_buffers": "'128MB'",
        # Streaming replicas (`entitled services up --replicas N`): these are PostgreSQL 15's
        # defaults but for wal_keep_size, spelled out because the replicas depend on them.
        "wal_level": "replica",
        "max_wal_senders": "10",
        "wal_keep_size": "'256MB'",
    }
    if state["fast"]:
        settings.update(FAST_SETTINGS)
    settings.update(tls_settings(state))
    install_certificate(state)
    if state.get("tls_dir"):
        hba = Path(state["data_dir"]) / "pg_hba.conf"
        hba.write_text(HBA_TLS_ONLY)
        _give(hba)
    path = Path(state["data_dir"]) / "entitled.conf"
    path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    _give(path)


def start(settings: Settings, state: PostgresState) -> PostgresState:
    """Initialise (once) and start the cluster, then make sure database `entitled` exists."""
    bin_dir()
    data = Path(state["data_dir"])
    pid = _postmaster_pid(data)
    if pid is None:
        proc.require_free_port(state["port"], "PostgreSQL")
        socket_dir = Path(state["socket_dir"])
        if len(f"{socket_dir}/.s.PGSQL.{state['port']}") > 100:
            raise ServicesError(
                f"The PostgreSQL socket path under {socket_dir} is too long for a unix socket; "
                "set ENTITLED_HOME to a shorter directory."
            )
        for directory in (data.parent, socket_dir):
            directory.mkdir(parents=True, exist_ok=True)
            _give(directory)
        _make_traversable(data)
        _initdb(state)
        _write_conf(state)
        log = Path(state["log_file"])
        log.parent.mkdir(parents=True, exist_ok=True)
        log.touch()
        _give(log)
        pg_ctl = str(bin_dir() / "pg_ctl")
        cmd = [pg_ctl, "start", "-w", "-t", "60", "-D", str(data), "-l", str(log)]
        _run(cmd, "pg_ctl start", log)
        pid = _postmaster_pid(data)
    state["pid"] = pid
    _create_database(state)
    return state


def _create_database(state: PostgresState) -> None:
    try:
        with psycopg.connect(url(state, "postgres"), autocommit=True, connect_timeout=10) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if found.fetchone() is None:
                conn.execute(f"CREATE DATABASE {DATABASE}")
    except psycopg.Error as exc:
        raise ServicesError(
            f"PostgreSQL on port {state['port']} does not accept connections ({exc}).\n"
            f"--- {state['log_file']} ---\n{proc.log_tail(Path(state['log_file']))}"
        ) from exc


def stop(state: PostgresState, *, kill: bool = False) -> None:
    """Stop the cluster (fast shutdown, or immediate if `kill`); leaves no process."""
    data = Path(state["data_dir"])
    pid = _postmaster_pid(data)  # only a postmaster of this data dir is ever signalled
    if pid is not None:
        mode = "immediate" if kill else "fast"
        pg_ctl = str(bin_dir() / "pg_ctl")
        # On failure fall back to signals below.
        with contextlib.suppress(ServicesError):
            _run([pg_ctl, "stop", "-w", "-t", "30", "-m", mode, "-D", str(data)], "pg_ctl stop")
    if pid is not None and proc.pid_alive(pid):
        proc.terminate(pid, timeout=30.0, kill_first=kill)
    state["pid"] = None


def healthy(state: PostgresState) -> bool:
    if not running(state):
        return False
    try:
        with psycopg.connect(url(state), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def health(state: PostgresState) -> dict[str, Any]:
    pid = _postmaster_pid(Path(state["data_dir"]))
    return {
        "port": state["port"],
        "pid": pid,
        "data_dir": state["data_dir"],
        "socket_dir": state["socket_dir"],
        "log_file": state["log_file"],
        "fast": state["fast"],
        "database_url": url(state),
        "healthy": healthy(state),
    }


def wipe(state: PostgresState) -> None:
    shutil.rmtree(Path(state["data_dir"]).parent, ignore_errors=True)
