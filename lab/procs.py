"""Start, stop and inspect the lab's daemons as plain processes with pidfiles, like init scripts.

Every lab daemon runs in its own session (so an SSH command that starts one can return at once),
with its output in a log file and its pid in a pidfile under the owning host's root folder.
Kept free of heavy imports: host scripts call it on every start and stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def read_pid(pidfile: Path) -> int | None:
    """The pid in `pidfile` if that process is alive (and not a zombie), else None."""
    try:
        pid = int(Path(pidfile).read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return proc_state(pid) not in ("", "Z", "X")


def proc_state(pid: int) -> str:
    """The process's state letter from /proc (`S` sleeping, `R` running, `T` stopped, ...), or
    '' when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0]  # after the command name, which may hold spaces
    except (OSError, IndexError):
        return ""


def start(
    argv: list[str],
    pidfile: Path,
    logfile: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    writes_own_pidfile: bool = False,
) -> int:
    """Start `argv` detached unless `pidfile` names a live process; return the pid.

    With `writes_own_pidfile` the daemon writes `pidfile` itself (it may fork); we wait for it.
    """
    pid = read_pid(pidfile)
    if pid:
        return pid
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as log, open(os.devnull, "rb") as null:
        proc = subprocess.Popen(
            argv,
            stdin=null,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    if writes_own_pidfile:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            pid = read_pid(pidfile)
            if pid:
                return pid
            if proc.poll() not in (None, 0):
                raise RuntimeError(f"{argv[0]} exited with {proc.returncode}; see {logfile}")
            time.sleep(0.05)
        raise RuntimeError(f"{argv[0]} wrote no pidfile {pidfile}; see {logfile}")
    pidfile.write_text(f"{proc.pid}\n")
    return proc.pid


def stop(pidfile: Path, *, grace: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
    """Send `sig` to the pidfile's process, wait up to `grace` s, then KILL. Returns the old pid."""
    pid = read_pid(pidfile)
    if pid is None:
        Path(pidfile).unlink(missing_ok=True)
        return None
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    if not wait_gone(pid, grace):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_gone(pid, 5)
    Path(pidfile).unlink(missing_ok=True)
    return pid


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def wait_port(address: str, port: int, timeout: float) -> bool:
    """True once a TCP connect to address:port succeeds within `timeout` seconds."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def children_by_parent() -> dict[int, list[int]]:
    """Every live process's pid, grouped by its parent's pid (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(roots: set[int] | list[int]) -> set[int]:
    """`roots` and every process under them (one /proc scan)."""
    children = children_by_parent()
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def processes_under(path: str) -> list[int]:
    """Pids of every process whose command line or cwd mentions `path` (for a final sweep)."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                cwd = ""
        except OSError:
            continue
        if path in cmdline or cwd.startswith(path):
            found.append(int(entry))
    return found


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids of every process (but this one) whose environment has `name=value` (a platform's
    processes carry its DWOPS_PREFECT_HOME)."""
    mark = f"{name}={value}".encode()
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if mark in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                pass
    return found
