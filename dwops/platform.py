"""Run dwops like production: a Prefect server, a work pool and worker, the deployments.

`dwops up` brings up, in the project's state folder (`.state/prefect`, PREFECT_HOME):
- a Prefect server on 127.0.0.1:4200 with basic auth on (a generated credential, stored 0600 in
  the state folder, shown once), its SQLite database under the state folder;
- the `dwops` process work pool and one worker polling it every half second;
- the global concurrency limit `dwops-maintenance` (one restart of webs, memcached or workers at a
  time, across every worker);
- every deployment of prefect.yaml, pointed at the lab's inventory.
Scheduled runs missed while no worker ran are cancelled before the worker starts.
`dwops down` stops the worker and the server (and the lab, unless `--keep-lab`).
`DWOPS_PREFECT_HOME` and `DWOPS_PREFECT_PORT` move the state folder and the port (the tests run
a second, private platform that way).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Callable
from pathlib import Path

from lab import procs
from lab.config import PROJECT_DIR, state_dir

HOST = "127.0.0.1"
PORT = int(os.environ.get("DWOPS_PREFECT_PORT", "4200"))
POOL = "dwops"
MAINTENANCE_LIMIT = "dwops-maintenance"

Say = Callable[[str], None]


def home() -> Path:
    """Prefect's home (PREFECT_HOME): `DWOPS_PREFECT_HOME`, default `<state>/prefect`."""
    return Path(os.environ.get("DWOPS_PREFECT_HOME") or state_dir() / "prefect").resolve()


def api_url() -> str:
    return f"http://{HOST}:{PORT}/api"


def ui_url() -> str:
    return f"http://{HOST}:{PORT}"


def credential_file() -> Path:
    return home() / "api-auth"


def credential(create: bool = False) -> tuple[str | None, bool]:
    """The server's `user:password` (None if there is none), and whether it was just made."""
    path = credential_file()
    if path.exists():
        return path.read_text().strip(), False
    if not create:
        return None, False
    path.parent.mkdir(parents=True, exist_ok=True)
    value = f"admin:{secrets.token_urlsafe(18)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value, True


def client_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a Prefect client of the running server (its credential from the file)."""
    env = dict(base if base is not None else os.environ)
    env.update(PREFECT_HOME=str(home()), PREFECT_API_URL=api_url(),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    cred, _ = credential()
    if cred:
        env["PREFECT_API_AUTH_STRING"] = cred
    return env


def server_env() -> dict[str, str]:
    env = client_env()
    env.pop("PREFECT_API_URL")
    cred, _ = credential()
    env.update(PREFECT_SERVER_API_HOST=HOST, PREFECT_SERVER_API_PORT=str(PORT),
               PREFECT_SERVER_API_AUTH_STRING=cred or "",
               PREFECT_UI_API_URL=api_url(), PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false")
    return env


def healthy(timeout: float = 2.0) -> bool:
    cred, _ = credential()
    req = urllib.request.Request(f"{api_url()}/health")
    if cred:
        req.add_header("Authorization", "Basic " + b64encode(cred.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def rest(method: str, url: str, body: object = None, credential: str | None = None,
         timeout: float = 30) -> tuple[int, object]:
    """One REST call as other systems make it (basic auth with `credential`): the HTTP status
    and the decoded JSON answer (its text if it is not JSON)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    if credential is not None:
        req.add_header("Authorization", "Basic " + b64encode(credential.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def prefect_bin() -> str:
    return str(Path(sys.executable).parent / "prefect")


def _pidfile(name: str) -> Path:
    return home() / f"{name}.pid"


def _log(name: str) -> Path:
    return home() / f"{name}.log"


def start_server(say: Say) -> None:
    credential(create=True)
    if procs.read_pid(_pidfile("server")) and healthy():
        return
    say(f"starting the Prefect server on {ui_url()}")
    procs.start([prefect_bin(), "server", "start", "--host", HOST, "--port", str(PORT)],
                _pidfile("server"), _log("server"), cwd=PROJECT_DIR, env=server_env())
    deadline = time.monotonic() + 180
    while not healthy():
        if not procs.read_pid(_pidfile("server")) or time.monotonic() > deadline:
            raise RuntimeError(f"the Prefect server did not start; see {_log('server')}")
        time.sleep(0.5)


def prefect(*args: str, check: bool = True, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    return subprocess.run([prefect_bin(), "--no-prompt", *args], cwd=PROJECT_DIR,
                          env=env or client_env(), capture_output=True, text=True, check=check)


def deploy(say: Say) -> None:
    if prefect("work-pool", "inspect", POOL, check=False).returncode != 0:
        say(f"creating the {POOL} process work pool")
        prefect("work-pool", "create", POOL, "--type", "process")
    if prefect("global-concurrency-limit", "inspect", MAINTENANCE_LIMIT, check=False).returncode:
        say(f"creating the global concurrency limit {MAINTENANCE_LIMIT} (1)")
        prefect("global-concurrency-limit", "create", MAINTENANCE_LIMIT, "--limit", "1")
    say("deploying every flow of prefect.yaml")
    env = client_env()
    env.update(DWOPS_PROJECT_DIR=str(PROJECT_DIR))
    out = prefect("deploy", "--all", env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"prefect deploy failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def _client_call(module: str, function: str, *args: str) -> str:
    """Run `await module.function(*args)` in a Prefect client process (so this one need not
    import Prefect); return what it printed."""
    out = subprocess.run([sys.executable, "-c", "import asyncio, importlib, sys\n"
                          f"f = getattr(importlib.import_module({module!r}), {function!r})\n"
                          "print(asyncio.run(f(*sys.argv[1:])))", *args],
                         cwd=PROJECT_DIR, env=client_env(), capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{module}.{function}: {out.stderr[-2000:]}")
    return out.stdout.strip()


def install_automations(say: Say, inventory: str = "lab") -> None:
    """The self-healing automations (deployments/automations.py)."""
    say(f"automations: {_client_call('deployments.automations', 'ensure_automations', inventory)}")


def cancel_missed_runs(say: Say) -> None:
    """Scheduled runs whose time passed while no worker ran are cancelled, not run late: a
    weekly restart missed on Tuesday must not start on Wednesday (deployments/missed.py)."""
    say(f"missed scheduled runs: {_client_call('deployments.missed', 'cancel_missed_runs')}")


def start_worker(say: Say, inventory: str = "lab") -> None:
    if procs.read_pid(_pidfile("worker")):
        return
    cancel_missed_runs(say)
    say(f"starting a worker for the {POOL} pool")
    env = client_env()
    env.update(PREFECT_WORKER_QUERY_SECONDS="0.5", PREFECT_WORKER_PREFETCH_SECONDS="5",
               PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30",  # deployments/automations.py: zombies
               DWOPS_PROJECT_DIR=str(PROJECT_DIR), DWOPS_INVENTORY=inventory)
    procs.start([prefect_bin(), "worker", "start", "--pool", POOL, "--type", "process",
                 "--name", "dwops-worker"], _pidfile("worker"), _log("worker"), cwd=PROJECT_DIR,
                env=env)


def stop(say: Say) -> list[str]:
    """Stop the worker, then the server. `prefect` relays SIGTERM to its child as SIGINT and
    can take long to finish; after `grace` its whole process group (its own session) is killed,
    so nothing is left behind."""
    stopped = []
    for name in ("worker", "server"):
        pid = procs.stop(_pidfile(name), grace=10)
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)  # started with start_new_session: pgid == pid
            except ProcessLookupError:
                pass
            say(f"stopped the Prefect {name} (pid {pid})")
            stopped.append(name)
    return stopped


def status() -> dict:
    return {"ui": ui_url(), "api": api_url(), "server_pid": procs.read_pid(_pidfile("server")),
            "worker_pid": procs.read_pid(_pidfile("worker")), "healthy": healthy(),
            "credential_file": str(credential_file())}
