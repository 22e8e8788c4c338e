"""A private `dwops up` for the benchmarks: the platform as dwops ships it (Prefect server with
basic auth, the `dwops` work pool and its worker, every deployment, the automations), in its
own state folder and on its own port, stopped with `dwops down --keep-lab` on every path.

Its schedules are turned off once it is up (fleet-status every 5 minutes and the WAF expiry
would otherwise run in the middle of a measurement); nothing else is changed. The runner starts
one and lends it to every section (`args.platform_stack`); a section run alone starts its own.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dwops.platform import free_port
from lab.procs import processes_with_env

PROJECT = Path(__file__).resolve().parents[1]
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


@dataclass
class Private:
    """A running private platform: its folder, port, credential and environment."""

    home: Path
    port: int
    credential: str
    env: dict[str, str]
    up_seconds: float
    _deployments: dict[str, dict] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def api(self, method: str, path: str, body: object = None, timeout: float = 30
            ) -> tuple[int, object]:
        """One REST call with basic auth, as other systems make it; 503s (SQLite busy) retried
        with jittered backoff as Prefect's own client does."""
        from dwops.platform import rest

        for attempt in range(8):
            status, answer = rest(method, f"{self.api_url}{path}", body, self.credential,
                                  timeout)
            if status != 503:
                return status, answer
            time.sleep(random.uniform(0.2, 0.6) * 2 ** min(attempt, 4))
        return status, answer

    def ok(self, method: str, path: str, body: object = None) -> object:
        status, answer = self.api(method, path, body)
        if not 200 <= status < 300:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {str(answer)[:500]}")
        return answer

    def deployment(self, name: str, fresh: bool = False) -> dict:
        if fresh or name not in self._deployments:
            self._deployments[name] = self.ok("GET", f"/deployments/name/{name}/{name}")
        return self._deployments[name]

    def create_run(self, name: str, params: dict | None = None) -> dict:
        """POST /deployments/{id}/create_flow_run, as the README's curl call does."""
        return self.ok("POST", f"/deployments/{self.deployment(name)['id']}/create_flow_run",
                       {"parameters": {"params": params or {}}})

    def wait_final(self, run_id: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.ok("GET", f"/flow_runs/{run_id}")
            if run["state_type"] in FINAL:
                return run
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run['name']} still {run['state_name']} after "
                                   f"{timeout:g} s (worker log: {self.home / 'worker.log'})")
            time.sleep(0.2)

    def states(self, run_id: str) -> list[dict]:
        """The run's states, oldest first."""
        states = self.ok("GET", f"/flow_run_states/?flow_run_id={run_id}")
        return sorted(states, key=lambda s: s["timestamp"])

    def pause_schedules(self) -> list[str]:
        """Turn every active schedule off (which also deletes the runs it had scheduled)."""
        paused = []
        for d in self.ok("POST", "/deployments/filter", {}):
            for s in d.get("schedules") or []:
                if s.get("active"):
                    self.ok("PATCH", f"/deployments/{d['id']}/schedules/{s['id']}",
                            {"active": False})
                    paused.append(d["name"])
        return paused

    def cancel_live_runs(self) -> int:
        """Cancel any run still pending, running or paused (a benchmark interrupted midway)."""
        live = self.ok("POST", "/flow_runs/filter", {"flow_runs": {"state": {"type": {
            "any_": ["RUNNING", "PENDING", "PAUSED", "SCHEDULED"]}}}})
        for run in live:
            self.api("POST", f"/flow_runs/{run['id']}/set_state",
                     {"state": {"type": "CANCELLED", "message": "benchmark cleanup"},
                      "force": True})
        return len(live)

    def worker_pid(self) -> int | None:
        return read_pid(self.home / "worker.pid")

    def stop_worker(self) -> None:
        """Stop only the worker (its process group), as `dwops down` does, keeping the server."""
        pid = self.worker_pid()
        if pid:
            _stop_group(pid)
        (self.home / "worker.pid").unlink(missing_ok=True)

    def dwops(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """The `dwops` CLI against this platform (it finds the server through its home)."""
        return subprocess.run([sys.executable, "-m", "dwops.cli", *args], cwd=PROJECT,
                              env=self.env, capture_output=True, text=True, timeout=timeout)


def read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _stop_group(pid: int, grace: float = 10) -> None:
    """SIGTERM the process group of `pid` (started in its own session), SIGKILL after grace."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass





@contextmanager
def private_platform(say=print) -> Iterator[Private]:
    """`dwops up` in a temporary folder on a free port; `dwops down --keep-lab` afterwards, and
    any process of it still left is killed (none should be)."""
    home = Path(tempfile.mkdtemp(prefix="dwops-bench-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(DWOPS_PREFECT_HOME=str(home), DWOPS_PREFECT_PORT=str(port), COLUMNS="250")
    say(f"starting a private dwops up in {home} on port {port}")
    started = time.monotonic()
    try:
        up = subprocess.run([sys.executable, "-m", "dwops.cli", "up"], cwd=PROJECT, env=env,
                            capture_output=True, text=True, timeout=600)
        if up.returncode:
            raise RuntimeError(f"dwops up failed ({up.returncode}):\n"
                               f"{(up.stdout + up.stderr)[-3000:]}")
        # The benchmarks set the platform up (schedules off, flows served): the worker account.
        p = Private(home=home, port=port, credential=(home / "worker-auth").read_text().strip(),
                    env=env, up_seconds=time.monotonic() - started)
        say(f"dwops up took {p.up_seconds:.0f} s; schedules turned off: "
            f"{', '.join(p.pause_schedules()) or 'none'}")
        yield p
    finally:
        subprocess.run([sys.executable, "-m", "dwops.cli", "down", "--keep-lab"], cwd=PROJECT,
                       env=env, capture_output=True, text=True, timeout=180)
        left = processes_with_env("DWOPS_PREFECT_HOME", str(home))
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if left:
            say(f"dwops down --keep-lab left {len(left)} processes; killed: {left}")


@contextmanager
def using_platform(args) -> Iterator[Private]:
    """The runner's shared platform (started on first use, stopped when the runner ends), or,
    for a section run on its own, a platform of its own."""
    shared = getattr(args, "platform", None)
    if shared is not None:
        yield shared
        return
    stack = getattr(args, "platform_stack", None)
    if stack is not None:
        args.platform = stack.enter_context(private_platform())
        yield args.platform
        return
    with private_platform() as p:
        yield p
