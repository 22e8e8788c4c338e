"""Promise: one operation at a time, across workers.

Many simultaneous triggers of the same restart, and of two restarts that must not overlap
(restart-webs and restart-memcache), sent through the REST API to a `dwops up` platform with two
workers polling the pool: exactly one operation runs and changes the lab; every other trigger is
refused (CANCEL_NEW for the same deployment, the `dwops-maintenance` lock across them), none is
queued behind it, and only one host's process is restarted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from lab import procs, services
from lab.config import PROJECT_DIR as PROJECT
from lab.config import LabConfig

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
TRIGGERS = 6  # of each restart, all at once
DUE_IN = 20  # seconds from the burst to the moment every run is due


def pid(lab: LabConfig, service: str, host: str) -> int | None:
    return procs.read_pid(services.find(lab, service, host).pidfile)


@pytest.fixture
def second_worker(platform):
    """Another worker on the same pool, as production runs one on each admin host."""
    env = dict(platform.env, PREFECT_API_URL=platform.api_url,
               PREFECT_API_AUTH_STRING=platform.worker_credential, PREFECT_HOME=str(platform.home),
               PREFECT_WORKER_QUERY_SECONDS="1", DWOPS_INVENTORY="lab",
               DWOPS_PROJECT_DIR=str(PROJECT))
    log = open(platform.home / "worker-2.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool",
                               "dwops", "--type", "process", "--name", "dwops-worker-2"],
                              cwd=PROJECT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while True:
        workers = platform.ok("POST", "/work_pools/dwops/workers/filter", {})
        if any(w["name"] == "dwops-worker-2" and w["status"] == "ONLINE" for w in workers):
            break
        assert worker.poll() is None and time.monotonic() < deadline, \
            f"the second worker did not come online; see {platform.home / 'worker-2.log'}"
        time.sleep(0.5)
    try:
        yield "dwops-worker-2"
    finally:
        os.killpg(worker.pid, signal.SIGTERM)  # `prefect` and the worker it runs
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(worker.pid, signal.SIGKILL)  # nothing of it is left behind
        except ProcessLookupError:
            pass
        worker.wait(5)
        log.close()


def test_simultaneous_triggers_of_two_restarts_run_one_operation_at_a_time(
        platform, lab: LabConfig, second_worker: str):
    web, node = "va-web06", "dfw-memc02"
    before = {"web": pid(lab, "apache2", web), "memcached": pid(lab, "memcached", node)}
    webs = {"hosts": [web], "delay": 1, "reason": "test: one at a time"}
    memcache = {"hosts": [node], "reason": "test: one at a time", "recovery_timeout": 120}
    triggers = [("restart-webs", webs)] * TRIGGERS + [("restart-memcache", memcache)] * TRIGGERS
    # Every run is due at the same instant, however long the burst of API calls takes.
    due = datetime.now(timezone.utc) + timedelta(seconds=DUE_IN)
    busy = platform.busy_answers
    with ThreadPoolExecutor(len(triggers)) as pool:  # all at once, as a burst of API calls
        created = list(pool.map(lambda t: platform.create_run(*t, at=due), triggers))
    busy = platform.busy_answers - busy
    assert [status for status, _ in created] == [201] * len(triggers), created
    assert datetime.now(timezone.utc) < due, "the burst took longer than DUE_IN"

    runs = [platform.wait_for(run["id"], FINAL, timeout=300) for _, run in created]
    by_state: dict[str, list[dict]] = {}
    for run in runs:
        by_state.setdefault(run["state_type"], []).append(run)
    summary = {s: len(r) for s, r in by_state.items()}
    assert "CRASHED" not in by_state and by_state.get("COMPLETED"), summary

    # Refused, not queued: CANCEL_NEW runs never ran nor waited for a slot; a run that got past
    # it but found the other restart holding the lock changed nothing and says so.
    for run in by_state.get("CANCELLED", []):
        history = platform.states(run["id"])
        assert "RUNNING" not in history and "AWAITINGCONCURRENCYSLOT" not in history, history
    assert summary.get("CANCELLED", 0) >= len(triggers) - 2, summary
    for run in by_state.get("FAILED", []):
        report = platform.report(run["id"])
        assert "holds 'dwops-maintenance'; nothing was changed" in report["description"], report
        assert " 0 done" in report["description"]

    # One operation at a time: the runs that changed something never overlapped.
    done = sorted((datetime.fromisoformat(r["start_time"]), datetime.fromisoformat(r["end_time"]),
                   platform.report(r["id"])["description"].split(" on ")[0])
                  for r in by_state["COMPLETED"])
    for (_, end, first), (start, _, second) in zip(done, done[1:]):
        assert end <= start, f"{first} and {second} overlapped"

    # Only the hosts of the operations that completed were restarted.
    after = {"web": pid(lab, "apache2", web), "memcached": pid(lab, "memcached", node)}
    changed = {k for k in before if after[k] != before[k]}
    completed = {"web" if f == "restart-webs" else "memcached" for _, _, f in done}
    assert changed == completed and all(after.values()), (done, before, after)

    taken = {name: sum(run["id"] in log for _, run in created) for name, log in (
        ("dwops-worker", (platform.home / "worker.log").read_text(errors="replace")),
        ("dwops-worker-2", (platform.home / "worker-2.log").read_text(errors="replace")))}
    print(f"one-at-a-time: {summary}, completed {[f for _, _, f in done]}, runs seen per "
          f"worker {taken}, 503s retried {busy}")
