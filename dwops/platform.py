"""Run dwops like production: a Prefect server behind a proxy, a work pool and worker, the deployments.

`dwops up` brings up, in the project's state folder (`.state/prefect`, PREFECT_HOME):
- the proxy (nginx) on 127.0.0.1:4200, the address users know, which authenticates every API
  request per account and authorizes it by role (dwops/proxy.py, dwops/gateway.py,
  dwops/policy.py); the first operator account is made and shown once, and kept 0600 in the
  state folder for the CLI on this machine;
- behind it, on loopback, a Prefect server (its SQLite database under the state folder) that
  only the proxy can call (its own credential, which no account has);
- the `dwops` process work pool and one worker polling it every half second;
- the global concurrency limit `dwops-maintenance` (one restart of webs, memcached or workers at a
  time, across every worker);
- every deployment of prefect.yaml, pointed at the lab's inventory.
Scheduled runs missed while no worker ran are cancelled before the worker starts.
`dwops down` stops the worker and the server (and the lab, unless `--keep-lab`).
`DWOPS_PREFECT_HOME` and `DWOPS_PREFECT_PORT` move the state folder and the port (the tests run
a second, private platform that way); the server takes the port after it, the gateway the next.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Callable
from pathlib import Path

from dwops import proxy
from dwops.accounts import AccountStore, Role
from lab import procs
from lab.config import PROJECT_DIR, state_dir

HOST = "127.0.0.1"
PORT = int(os.environ.get("DWOPS_PREFECT_PORT", "4200"))  # the proxy: the address users know
SERVER_PORT = PORT + 1  # the Prefect server, behind the proxy
GATEWAY_PORT = PORT + 2  # the proxy's authorization service
POOL = "dwops"
MAINTENANCE_LIMIT = "dwops-maintenance"
FIRST_OPERATOR = "admin"
WORKER_ACCOUNT = "worker"

Say = Callable[[str], None]


def free_port() -> int:
    """A free port for a private platform's proxy whose next two (the Prefect server's, the gateway's) are free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000 and all(_free(port + k) for k in (1, 2)):
            return port


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def home() -> Path:
    """Prefect's home (PREFECT_HOME): `DWOPS_PREFECT_HOME`, default `<state>/prefect`."""
    return Path(os.environ.get("DWOPS_PREFECT_HOME") or state_dir() / "prefect").resolve()


def api_url() -> str:
    return f"http://{HOST}:{PORT}/api"


def ui_url() -> str:
    return f"http://{HOST}:{PORT}"


def server_api_url() -> str:
    """The Prefect server itself, which only the proxy and the gateway talk to."""
    return f"http://{HOST}:{SERVER_PORT}/api"


def credential_file() -> Path:
    """The first operator account's `NAME:SECRET`, for the CLI on this machine (0600)."""
    return home() / "api-auth"


def worker_credential_file() -> Path:
    return home() / "worker-auth"


def upstream_credential_file() -> Path:
    """The Prefect server's own credential: the proxy and the gateway send it; no account has it."""
    return home() / "upstream-auth"


def accounts() -> AccountStore:
    return AccountStore(home() / "accounts")


def _secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def credential() -> str | None:
    """The CLI's account on this machine (the first operator's), if `dwops up` made one."""
    return _read(credential_file())


def ensure_accounts() -> str | None:
    """What `dwops up` needs: the server's own credential, the worker account and the first
    operator account. Returns the operator's `NAME:SECRET` when it was just made (shown once)."""
    if not upstream_credential_file().exists():
        _secret(upstream_credential_file(), f"prefect:{secrets.token_urlsafe(32)}")
    store = accounts()
    made = None
    for name, role, path in ((WORKER_ACCOUNT, Role.WORKER, worker_credential_file()),
                             (FIRST_OPERATOR, Role.OPERATOR, credential_file())):
        if path.exists() and name in store.load():
            continue
        if name in store.load():
            store.remove(name)  # its secret was lost: a new one
        path.unlink(missing_ok=True)
        value = store.add(name, role)
        _secret(path, value)
        made = value if role is Role.OPERATOR else made
    return made


def client_env(base: dict[str, str] | None = None, account_file: Path | None = None
               ) -> dict[str, str]:
    """Environment for a Prefect client of the running platform, through the proxy, as the
    account in `account_file` (default: the first operator's)."""
    env = dict(base if base is not None else os.environ)
    env.update(PREFECT_HOME=str(home()), PREFECT_API_URL=api_url(),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    cred = _read(account_file or credential_file())
    if cred:
        env["PREFECT_API_AUTH_STRING"] = cred
    return env


def service_env() -> dict[str, str]:
    """A client as the worker account: deploys, automations, the worker itself."""
    return client_env(account_file=worker_credential_file())


def server_env() -> dict[str, str]:
    env = client_env()
    env.pop("PREFECT_API_URL")
    env.pop("PREFECT_API_AUTH_STRING", None)
    env.update(PREFECT_SERVER_API_HOST=HOST, PREFECT_SERVER_API_PORT=str(SERVER_PORT),
               PREFECT_SERVER_API_AUTH_STRING=_read(upstream_credential_file()) or "",
               PREFECT_UI_API_URL=api_url(), PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false")
    return env


def healthy(timeout: float = 2.0) -> bool:
    """Whether the proxy answers and the Prefect server behind it is healthy."""
    try:
        with urllib.request.urlopen(f"{api_url()}/health", timeout=timeout) as r:
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


def _wait(what: str, ready: Callable[[], bool], name: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if not procs.read_pid(_pidfile(name)) or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start; see {_log(name)}")
        time.sleep(0.3)


def _server_healthy() -> bool:
    try:
        with urllib.request.urlopen(f"{server_api_url()}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def layout() -> proxy.ProxyLayout:
    return proxy.ProxyLayout(folder=home() / "proxy", port=PORT, server_port=SERVER_PORT,
                             gateway_port=GATEWAY_PORT, htpasswd=accounts().htpasswd,
                             upstream_credential=_read(upstream_credential_file()) or "")


def start_server(say: Say) -> None:
    """The Prefect server on loopback (SERVER_PORT), the gateway, then the proxy in front of
    them on the address users know (PORT)."""
    ensure_accounts()
    if not procs.read_pid(_pidfile("server")):
        say(f"starting the Prefect server behind the proxy (127.0.0.1:{SERVER_PORT})")
        procs.start([prefect_bin(), "server", "start", "--host", HOST, "--port", str(SERVER_PORT)],
                    _pidfile("server"), _log("server"), cwd=PROJECT_DIR, env=server_env())
    _wait("the Prefect server", _server_healthy, "server")
    if not procs.read_pid(_pidfile("gateway")):
        env = dict(os.environ, DWOPS_GATEWAY_UPSTREAM=server_api_url(),
                   DWOPS_GATEWAY_UPSTREAM_AUTH_FILE=str(upstream_credential_file()),
                   DWOPS_GATEWAY_ACCOUNTS=str(accounts().folder))
        procs.start([sys.executable, "-m", "dwops.gateway", "--port", str(GATEWAY_PORT)],
                    _pidfile("gateway"), _log("gateway"), cwd=PROJECT_DIR, env=env)
    _wait("the gateway", lambda: procs.wait_port(HOST, GATEWAY_PORT, 0.2), "gateway", 60)
    if not procs.read_pid(_pidfile("proxy")):
        say(f"starting the proxy (nginx) on {ui_url()}")
        lay = layout()
        proxy.write(lay)
        check = subprocess.run(proxy.nginx_argv(lay, "-t"), capture_output=True, text=True)
        if check.returncode:
            raise RuntimeError(f"nginx refused its configuration: {check.stderr.strip()}")
        procs.start(proxy.nginx_argv(lay), _pidfile("proxy"), _log("proxy"), cwd=lay.folder)
    _wait("the proxy", healthy, "proxy", 60)


def prefect(*args: str, check: bool = True, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """The `prefect` CLI against the platform, as the worker account unless `env` says."""
    return subprocess.run([prefect_bin(), "--no-prompt", *args], cwd=PROJECT_DIR,
                          env=env or service_env(), capture_output=True, text=True, check=check)


def deploy(say: Say) -> None:
    if prefect("work-pool", "inspect", POOL, check=False).returncode != 0:
        say(f"creating the {POOL} process work pool")
        prefect("work-pool", "create", POOL, "--type", "process")
    if prefect("global-concurrency-limit", "inspect", MAINTENANCE_LIMIT, check=False).returncode:
        say(f"creating the global concurrency limit {MAINTENANCE_LIMIT} (1)")
        prefect("global-concurrency-limit", "create", MAINTENANCE_LIMIT, "--limit", "1")
    say("deploying every flow of prefect.yaml")
    env = service_env()
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
                         cwd=PROJECT_DIR, env=service_env(), capture_output=True, text=True)
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
    env = service_env()
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
    for name in ("worker", "proxy", "gateway", "server"):
        pid = procs.stop(_pidfile(name), grace=10)
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)  # started with start_new_session: pgid == pid
            except ProcessLookupError:
                pass
            say(f"stopped the {name} (pid {pid})")
            stopped.append(name)
    return stopped


def status() -> dict:
    return {"ui": ui_url(), "api": api_url(), "server_api": server_api_url(),
            **{f"{name}_pid": procs.read_pid(_pidfile(name))
               for name in ("proxy", "gateway", "server", "worker")},
            "healthy": healthy(), "credential_file": str(credential_file())}
