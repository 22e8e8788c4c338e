"""Promise: one operation at a time, across workers.

Many simultaneous triggers of the same restart, and of two restarts that must not overlap
(restart-webs and restart-memcache), sent through the REST API to a `dwops up` platform with two
workers polling the pool. No two maintenance runs read or change the fleet at the same time: each
run that acts holds the `dwops-maintenance` lock from before its first read of the fleet until its
report is made, and those windows never overlap; every other trigger is refused (CANCEL_NEW for
the same deployment, the lock across them), none is queued behind it, and only the hosts of the
runs that completed got a new process, started inside the window of the run that restarted it.

What is measured is the promise, not Prefect's Running times: a run is Running from its
process's start, and starts, loads its inventory and publishes its plan before it asks for the
lock, touching no host; two runs' Running times may overlap by that much (printed).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

import pytest

from lab import procs, services
from lab.config import PROJECT_DIR as PROJECT
from lab.config import LabConfig

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
TRIGGERS = 6  # of each restart, all at once
DUE_IN = 20  # seconds from the burst to the moment every run is due


# A report's record of the run's hold on the lock (dwops.runbook.Report.lock_line).
LOCK_HELD = re.compile(r"maintenance lock: taken at (\S+Z), still held at (\S+Z) \(this report\)")


def pid(lab: LabConfig, service: str, host: str) -> int | None:
    return procs.read_pid(services.find(lab, service, host).pidfile)


def started_at(pid: int) -> datetime:
    """When the process began, from the kernel (/proc/PID/stat's start time, in clock ticks
    since boot)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), timezone.utc)


class Acted(NamedTuple):
    """A run that acted: its hold on the lock, from its report."""

    taken: datetime
    held: datetime  # still held then, when its report was made
    flow: str
    run: dict


def lock_window(report: dict) -> tuple[datetime, datetime] | None:
    """From a run's report: when it took the maintenance lock and when it made the report, still
    holding it (everything the run read or changed is in between); None if it never took it."""
    held = LOCK_HELD.search(report["data"])
    if held is None:
        return None
    taken, still_held = (datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=timezone.utc) for t in held.groups())
    return taken, still_held


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
        assert lock_window(report) is None, report["data"]  # it never held the lock

    # One operation at a time: each run that acted held the lock from before its first read to
    # its report (its report says when), and no two of those windows overlapped.
    acted = []
    for run in by_state["COMPLETED"]:
        report = platform.report(run["id"])
        window = lock_window(report)
        assert window, f"{run['name']}: no hold on the lock in its report: {report['data']}"
        acted.append(Acted(*window, report["description"].split(" on ")[0], run))
    acted.sort(key=lambda a: a.taken)
    for a, b in zip(acted, acted[1:]):
        assert a.held < b.taken, f"{a.flow} still held the lock at {a.held} when {b.flow} took " \
                                 f"it at {b.taken}"

    # Only the hosts of the operations that completed were restarted, each one's new process
    # started (says the kernel) inside the window of the run that restarted it.
    after = {"web": pid(lab, "apache2", web), "memcached": pid(lab, "memcached", node)}
    changed = {k for k in before if after[k] != before[k]}
    completed = {"web" if a.flow == "restart-webs" else "memcached": a for a in acted}
    assert changed == set(completed) and all(after.values()), (acted, before, after)
    for what, a in completed.items():
        assert a.taken < started_at(after[what]) < a.held, (what, started_at(after[what]), a)

    # For the record: how far apart the windows were, and how much the Prefect Running times of
    # the same runs overlapped (their starts and plans, outside the lock).
    gaps = [f"{(b.taken - a.held).total_seconds():.1f} s" for a, b in zip(acted, acted[1:])]
    running = [(datetime.fromisoformat(a.run["start_time"]),
                datetime.fromisoformat(a.run["end_time"])) for a in acted]
    overlap = max([0.0] + [(end - start).total_seconds()
                           for (_, end), (start, _) in zip(running, running[1:])])
    seen = {name: sum(run["id"] in log for _, run in created) for name, log in (
        ("dwops-worker", (platform.home / "worker.log").read_text(errors="replace")),
        ("dwops-worker-2", (platform.home / "worker-2.log").read_text(errors="replace")))}
    print(f"one-at-a-time: {summary}, completed "
          f"{[f'{a.flow} (lock held {(a.held - a.taken).total_seconds():.1f} s)' for a in acted]}"
          f", gaps between the windows {gaps}, Prefect Running times overlapped by "
          f"{overlap:.1f} s, runs seen per worker {seen}, 503s retried {busy}")
