"""Process plumbing shared by the Kafka and PostgreSQL launchers.

State (ports, pids) lives in `services_dir/state.json` so that a restart reuses the same
ports and `down` finds the processes of an earlier run. Processes are started detached
(own session, reparented to init) so they outlive the command that started them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from launcher.services.errors import ServicesError

T = TypeVar("T")

State = dict[str, Any]


def state_path(services_dir: Path) -> Path:
    return services_dir / "state.json"


def load_state(services_dir: Path) -> State:
    path = state_path(services_dir)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ServicesError(
            f"The services state file {path} is unreadable ({exc}). "
            "Run `entitled services down --wipe` to start from scratch."
        ) from exc
    if not isinstance(data, dict):
        raise ServicesError(f"{path} is not a JSON object; run `entitled services down --wipe`.")
    return data


def save_state(services_dir: Path, state: State) -> None:
    services_dir.mkdir(parents=True, exist_ok=True)
    path = state_path(services_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(path)  # atomic: a crash never leaves half a state file


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise `up`/`down` of one home (and jar downloads of one cache) across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def refuse_foreign(data: Path, what: str) -> None:
    """Refuse a data directory that holds files but not what its service made (`what`):
    starting there could destroy someone's data, and a wipe is the operator's decision."""
    if data.exists() and any(data.iterdir()):
        raise ServicesError(
            f"The {what} data directory {data} is not empty but was never initialised (a"
            " corrupt or foreign data dir). Run `entitled services down --wipe`."
        )


def free_port() -> int:
    """An OS-chosen free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR as the servers use it: a port in TIME_WAIT after our own stop is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def require_free_port(port: int, what: str) -> None:
    if not port_is_free(port):
        raise ServicesError(
            f"Port {port} on 127.0.0.1, remembered for {what}, is taken by another process. "
            f"Find it with `ss -ltnp 'sport = :{port}'` and stop it, or run "
            "`entitled services down --wipe` so that new free ports are chosen."
        )


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int | None) -> bool:
    """True while `pid` runs; zombies count as gone (and our own children get reaped)."""
    if not pid:
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name.
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def pid_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def spawn_detached(cmd: list[str], log_file: Path, env: dict[str, str] | None = None) -> int:
    """Start `cmd` in its own session with output appended to `log_file`; return its pid.

    A short-lived `sh` backgrounds the command and exits, so the server is reparented to
    init: it outlives this process and never becomes our zombie.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    script = 'log="$1"; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!'
    out = subprocess.run(
        ["sh", "-c", script, "sh", str(log_file), *cmd],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        start_new_session=True,
    )
    return int(out.stdout.strip())


def terminate(pid: int | None, timeout: float, *, kill_first: bool = False) -> None:
    """Stop `pid`: SIGTERM, then SIGKILL after `timeout` seconds; return when it is gone."""
    if not pid_alive(pid):
        return
    assert pid is not None
    sig = signal.SIGKILL if kill_first else signal.SIGTERM
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while pid_alive(pid):
                if time.monotonic() > deadline:
                    raise ServicesError(f"Process {pid} survives SIGKILL; stop it by hand.")
                time.sleep(0.05)
            return
        time.sleep(0.05)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, even when called inside an event loop.

    It runs on a fresh loop in its own thread, so the caller's loop (pytest-asyncio's
    session loop, say) is neither required nor disturbed.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        async def main() -> T:
            return await make()

        try:
            result.append(asyncio.run(main()))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="entitled-services-async")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
