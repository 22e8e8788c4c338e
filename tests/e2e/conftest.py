"""A private `dwops up` for the tests in this folder: the real main command, run on the lab.

The platform (the proxy with its accounts in front of the Prefect server, the `dwops` work pool
and its worker, every deployment of prefect.yaml, the automations) gets its own state folder and
port
(`DWOPS_PREFECT_HOME`, `DWOPS_PREFECT_PORT`), so it shares nothing with an operator's own
`dwops up`. It lives for this package's tests only (package scope: this folder has an
`__init__.py`, without which pytest would keep it for the whole session) and is stopped with
`dwops down --keep-lab`: its scheduled fleet-status and self-healing must not run while the rest
of the suite stops daemons on purpose. After it stops, no process of it is left.

Tests here talk to it as other systems and people do: REST over HTTP through the proxy with an
account (basic auth), and the `dwops` CLI.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from dwops.platform import free_port

PROJECT = Path(__file__).resolve().parents[2]


@dataclass
class Platform:
    """A running `dwops up`: where it listens, its credential, and how to talk to it."""

    home: Path
    port: int
    credential: str
    env: dict[str, str]
    up_output: str
    up_seconds: float
    _deployments: dict[str, dict] = field(default_factory=dict)
    _accounts: dict[str, str] = field(default_factory=dict)
    busy_answers: int = 0  # 503s seen (and retried) by create_run

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    @property
    def worker_credential(self) -> str:
        """The worker account `dwops up` made (what a second worker signs in with)."""
        return (self.home / "worker-auth").read_text().strip()

    def api(self, method: str, path: str, body: object = None, *,
            credential: str | None = "default", timeout: float = 30) -> tuple[int, object]:
        """One REST call; returns (HTTP status, decoded JSON body or text).

        A busy server (the lab's SQLite database under a burst of writes: "database is locked")
        answers 503: retried with jittered backoff, as Prefect's own client does."""
        for attempt in range(8):
            status, answer = self._call(method, path, body, credential, timeout)
            if status != 503:
                return status, answer
            self.busy_answers += 1
            time.sleep(random.uniform(0.5, 1.5) * 2 ** min(attempt, 4))
        return status, answer

    def _call(self, method: str, path: str, body: object, credential: str | None,
              timeout: float) -> tuple[int, object]:
        from dwops.platform import rest

        cred = self.credential if credential == "default" else credential
        return rest(method, f"{self.api_url}{path}", body, cred, timeout)

    def ok(self, method: str, path: str, body: object = None) -> object:
        status, answer = self.api(method, path, body)
        assert 200 <= status < 300, f"{method} {path}: HTTP {status}: {answer}"
        return answer

    def deployment(self, name: str) -> dict:
        if name not in self._deployments:
            self._deployments[name] = self.ok("GET", f"/deployments/name/{name}/{name}")
        return self._deployments[name]

    def create_run(self, name: str, params: dict | None = None,
                   idempotency_key: str | None = None, at: datetime | None = None
                   ) -> tuple[int, object]:
        """POST /deployments/{id}/create_flow_run, as the README's curl call does (`at`: a run
        scheduled for then instead of now)."""
        body: dict = {"parameters": {"params": params or {}}}
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        if at is not None:
            body["state"] = {"type": "SCHEDULED",
                             "state_details": {"scheduled_time": at.isoformat()}}
        return self.api("POST", f"/deployments/{self.deployment(name)['id']}/create_flow_run",
                        body)

    def resume(self, run_id: str, run_input: dict, wait: float = 15) -> dict:
        """POST /flow_runs/{id}/resume with the approval form's answer, as a UI or another
        system does. A run pauses first and saves its form's schema just after: an answer sent
        in between is refused ("Run input schema not found") and the run stays paused, so that
        one refusal is retried."""
        deadline = time.monotonic() + wait
        while True:
            answer = self.ok("POST", f"/flow_runs/{run_id}/resume", {"run_input": run_input})
            reason = (answer.get("details") or {}).get("reason") or ""
            if answer["status"] == "ACCEPT" or "schema not found" not in reason \
                    or time.monotonic() > deadline:
                return answer
            time.sleep(0.5)

    def states(self, run_id: str) -> list[str]:
        """The run's state history, oldest first (state type names)."""
        states = self.ok("GET", f"/flow_run_states/?flow_run_id={run_id}")
        return [s["type"] for s in sorted(states, key=lambda s: s["timestamp"])]

    def cancel_live_runs(self, timeout: float = 60) -> None:
        """Cancel every pending, running or paused run as the UI's Cancel does (CANCELLING: the
        worker kills its process), and wait until they are final."""
        live = self.ok("POST", "/flow_runs/filter", {"flow_runs": {"state": {"type": {
            "any_": ["RUNNING", "PENDING", "PAUSED", "CANCELLING"]}}}})
        for run in live:
            self.api("POST", f"/flow_runs/{run['id']}/set_state",
                     {"state": {"type": "CANCELLING", "message": "test cleanup"}, "force": True})
        for run in live:
            self.wait_for(run["id"], {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}, timeout)

    def run(self, run_id: str) -> dict:
        return self.ok("GET", f"/flow_runs/{run_id}")

    def wait_for(self, run_id: str, states: set[str], timeout: float = 180) -> dict:
        """Poll a run until its state type is one of `states`; fail with its last state."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run["state_type"] in states:
                return run
            if time.monotonic() > deadline:
                pytest.fail(f"run {run['name']} still {run['state_name']} after {timeout} s "
                            f"(wanted {sorted(states)}); worker log: "
                            f"{self.home / 'worker.log'}")
            time.sleep(0.5)

    def artifacts(self, run_id: str) -> list[dict]:
        return self.ok("POST", "/artifacts/filter",
                       {"artifacts": {"flow_run_id": {"any_": [run_id]}}})

    def report(self, run_id: str) -> dict:
        """The run's report artifact (`<flow>-report`)."""
        reports = [a for a in self.artifacts(run_id) if (a.get("key") or "").endswith("-report")]
        assert reports, f"run {run_id} has no report artifact"
        return reports[-1]

    def dwops(self, *args: str, timeout: float = 300, account: str | None = None
              ) -> subprocess.CompletedProcess:
        """The `dwops` CLI against this platform, signed in as `account` (`NAME:SECRET`; default
        the first operator's, which `dwops up` keeps in its state folder)."""
        env = dict(self.env, PREFECT_API_AUTH_STRING=account) if account else self.env
        return subprocess.run([sys.executable, "-m", "dwops.cli", *args], cwd=PROJECT,
                              env=env, capture_output=True, text=True, timeout=timeout)

    def account(self, name: str, role: str, deployments: str = "") -> str:
        """A new account made with `dwops user add`: its `NAME:SECRET` (the last line)."""
        if name not in self._accounts:
            extra = ("--deployments", deployments) if deployments else ()
            out = self.dwops("user", "add", name, "--role", role, *extra)
            assert out.returncode == 0, out.stdout + out.stderr
            self._accounts[name] = out.stdout.strip().splitlines()[-1]
        return self._accounts[name]




@pytest.fixture(scope="package")
def platform(lab, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("dwops-platform")
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREFECT_") or k in ("PREFECT_SERVER_ANALYTICS_ENABLED",)}
    env.update(DWOPS_PREFECT_HOME=str(home), DWOPS_PREFECT_PORT=str(port), COLUMNS="250")
    started = time.monotonic()
    up = subprocess.run([sys.executable, "-m", "dwops.cli", "up"], cwd=PROJECT, env=env,
                        capture_output=True, text=True, timeout=600)
    took = time.monotonic() - started
    output = up.stdout + up.stderr
    try:
        if up.returncode:
            pytest.fail(f"dwops up failed ({up.returncode}):\n{output[-4000:]}", pytrace=False)
        credential = (home / "api-auth").read_text().strip()
        yield Platform(home=home, port=port, credential=credential, env=env,
                       up_output=output, up_seconds=took)
    finally:
        subprocess.run([sys.executable, "-m", "dwops.cli", "down", "--keep-lab"], cwd=PROJECT,
                       env=env, capture_output=True, text=True, timeout=120)
        left = _processes_of(home)
        for pid in left:  # never leave a worker or server running the schedules on the lab
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        assert not left, f"dwops down left processes of the platform running: {left}"


def _processes_of(home: Path) -> list[int]:
    """Processes whose environment points at this platform's state folder."""
    from lab.procs import processes_with_env

    return processes_with_env("DWOPS_PREFECT_HOME", str(home))
