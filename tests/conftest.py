"""Fixtures for tests that run against the real lab (`dwops lab up`; `scripts/test` brings it up).

No test here mocks SSH, memcached, MySQL, gearman or the lock daemon: they talk to the lab's real
servers. A missing lab is an error, not a skip.
"""

from __future__ import annotations

import pytest

from dwops.settings import use_project_prefect

use_project_prefect(connect_to_running=False)  # before anything imports prefect

from dwops.inventory import Inventory, resolve_inventory
from lab.config import LabConfig


@pytest.fixture(scope="session")
def lab() -> LabConfig:
    """The running lab's configuration; fails (never skips) when the lab is not up, or when a
    `dwops up` worker runs against it (its self-healing would start what a test stopped)."""
    from dwops import platform
    from lab import fleet, procs

    worker = procs.read_pid(platform.home() / "worker.pid")
    if worker:
        pytest.fail(f"a dwops worker (pid {worker}) runs flows on this lab and would fight the "
                    f"tests: stop it with `dwops down --keep-lab` first", pytrace=False)

    try:
        st = fleet.wait_until_up(timeout=30)  # a service a test is restarting comes back
    except FileNotFoundError as e:
        pytest.fail(f"{e}: run scripts/test (or `dwops lab up`) first", pytrace=False)
    down = [f"{s['name']}@{s['host']}" for s in st["services"] if not s["up"]]
    if down:
        pytest.fail(f"the lab is not fully up: {', '.join(down)} down", pytrace=False)
    cfg = LabConfig.load()
    short = _wait_for_importers(cfg, timeout=30)
    if short:
        pytest.fail(f"the lab's workers are not all up: {short}", pytrace=False)
    return cfg


def _wait_for_importers(cfg: LabConfig, timeout: float) -> str:
    """Wait until every jobs host runs its content-importers (a worker-manager starts one per
    5 s pass after `lab up`); return what is still missing, or ''."""
    import time

    from lab import ctl
    from lab.workers import read_title

    deadline = time.monotonic() + timeout
    while True:
        missing = []
        for h in cfg.hosts_with("jobs"):
            n = sum(read_title(pid).startswith("content-importer") for pid in ctl.host_pids(cfg, h.name))
            if n < cfg.workload.importers_per_host:
                missing.append(f"{h.name} has {n} of {cfg.workload.importers_per_host} importers")
        if not missing or time.monotonic() > deadline:
            return ", ".join(missing)
        time.sleep(0.5)


@pytest.fixture(scope="session")
def lab_inventory(lab: LabConfig) -> Inventory:
    """The lab's inventory, loaded through the same loader as production's."""
    return resolve_inventory("lab")


@pytest.fixture(scope="session")
def oracle_inventory(lab_inventory: Inventory, lab: LabConfig) -> Inventory:
    """The lab's inventory with the lab's oracle key in place of dwops's: any command on any host,
    for tests that read or change a host by hand (dwops's own key runs only the host's
    allowlist)."""
    from dwops.inventory import SecretRef
    from lab.hostfiles import ssh_paths

    ssh = lab_inventory.ssh.model_copy(
        update={"client_key": SecretRef(file=str(ssh_paths(lab)["oracle_key"]))})
    return lab_inventory.model_copy(update={"ssh": ssh})


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory):
    """A real Prefect server for this test session, on loopback, with its own database.

    Sets PREFECT_API_URL for this process and the dwops commands the tests run, so flows report
    their runs, logs and artifacts to it.
    """
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path_factory.mktemp("prefect-home")
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_UI_ENABLED="false",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "wb")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
         "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"Prefect server did not start; see {home / 'server.log'}", pytrace=False)
        time.sleep(0.5)
    old = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
    os.environ["PREFECT_API_URL"] = url
    os.environ["PREFECT_HOME"] = str(home)
    try:
        yield url
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="session")
def dwops_run(prefect_api: str, tmp_path_factory: pytest.TempPathFactory):
    """Run `dwops run NAME -p k=v ... --json` as an operator would, against the test session's
    Prefect server. Returns (exit code, the run's report as a dict or None, stderr).

    Each command is its own process running the real CLI, forked from a pre-imported `dwops`
    (tests/_dwops_zygote.py) rather than a new Python importing Prefect every time.
    `background=True` returns the Popen instead, for tests that act while a flow runs.
    """
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    project = Path(__file__).resolve().parent.parent
    zygote_py = str(Path(__file__).resolve().parent / "_dwops_zygote.py")
    socket_path = str(tmp_path_factory.mktemp("zygote") / "dwops.sock")
    zygote = subprocess.Popen([sys.executable, zygote_py, "serve", socket_path], cwd=project,
                              env=dict(os.environ, PREFECT_API_URL=prefect_api),
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    if zygote.stdout.readline().strip() != "ready":
        zygote.kill()
        pytest.fail("the dwops zygote did not start", pytrace=False)

    def run(name: str, *params: str, approve: bool = False, background: bool = False,
            timeout: float = 300, extra: tuple[str, ...] = ()):
        argv = [sys.executable, zygote_py, "launch", socket_path, "run", name, "--json", *extra]
        for p in params:
            argv += ["-p", p]
        if approve:
            argv.append("--approve")
        env = dict(os.environ, PREFECT_API_URL=prefect_api)
        if background:
            return subprocess.Popen(argv, cwd=project, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True,
                             timeout=timeout)
        return out.returncode, _report(out.stdout), out.stderr

    def _report(stdout: str):
        try:
            return json.loads(stdout)
        except ValueError:
            return None

    run.report = _report
    try:
        yield run
    finally:
        zygote.terminate()
        try:
            zygote.wait(10)
        except subprocess.TimeoutExpired:
            zygote.kill()
