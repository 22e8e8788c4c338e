"""Promise: crash safety.

The worker dies in the middle of a rolling web restart (the worker and every process under it are
killed outright, as when its admin host loses power): the run is marked Crashed (its heartbeats
stop; the platform's automation says so), the lab is left as the roll left it (a web out of the
target group, the webs after it untouched), and a run naming that web in `put_back` finishes
the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from lab import procs, services
from lab.config import PROJECT_DIR, LabConfig
from test_flow_restart_webs import all_in_rotation, put_back, registered, webs

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def pid(lab: LabConfig, host: str) -> int | None:
    return procs.read_pid(services.find(lab, "apache2", host).pidfile)


def kill_tree(root: int) -> set[int]:
    """SIGKILL `root` and every process under it; return their pids."""
    found = procs.descendants([root])
    for p in found:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return found


def start_worker(platform) -> None:
    out = subprocess.run([sys.executable, "-c", "from dwops import platform\n"
                          "platform.start_worker(print)"], cwd=PROJECT_DIR, env=platform.env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.timeout(600)  # heartbeats every 30 s, 90 s of silence, a 90 s lease: ~2.5 min
def test_a_worker_killed_mid_roll_leaves_a_crashed_run_and_a_lab_the_next_run_finishes(
        platform, lab: LabConfig):
    order = all_in_rotation(lab)
    before = {h: pid(lab, h) for h in webs(lab)}
    worker = procs.read_pid(platform.home / "worker.pid")
    assert worker
    try:
        status, run = platform.create_run("restart-webs", {"delay": 1, "reason": "test: crash"})
        assert status == 201, run

        # The canary is done; the second web is out of the target group: the host dies now.
        deadline = time.monotonic() + 120
        while "va-web02" in dict(registered(lab)):
            assert time.monotonic() < deadline, "the roll never reached va-web02"
            time.sleep(0.05)
        killed = kill_tree(worker)
        assert len(killed) >= 2  # the worker and the run's process at least
        (platform.home / "worker.pid").unlink(missing_ok=True)
        crashed_at = time.monotonic()

        crashed = platform.wait_for(run["id"], FINAL, timeout=240)
        detected = time.monotonic() - crashed_at
        assert crashed["state_type"] == "CRASHED", crashed["state"]
        assert "no heartbeat" in crashed["state"]["message"]

        # The lab as the roll left it: the canary restarted and back; va-web02 out of rotation;
        # the webs after it untouched and serving.
        alb = dict(registered(lab))
        assert "va-web02" not in alb
        assert pid(lab, "va-web01") not in (None, before["va-web01"]) and alb["va-web01"] == "healthy"
        later = ["va-web03", "va-web04", "va-web05", "va-web06"]
        assert {h: pid(lab, h) for h in later} == {h: before[h] for h in later}
        assert all(alb[h] == "healthy" for h in later), alb

        # The dead run's hold on the maintenance lock ends with its lease (at most 120 s).
        deadline = time.monotonic() + 180
        while platform.ok("GET", "/v2/concurrency_limits/dwops-maintenance")["active_slots"]:
            assert time.monotonic() < deadline, "the maintenance lock was never freed"
            time.sleep(1)
        freed = time.monotonic() - crashed_at

        # A new worker; the run that names the web left out finishes the job (a plain re-run
        # refuses, naming it and put_back: tests/test_guarantee_faults.py shows that).
        start_worker(platform)

        # The run that names it finishes the job: va-web02 first, then the canary and the rest.
        status, again = platform.create_run("restart-webs", {"delay": 1,
                                                             "put_back": ["va-web02"]})
        again = platform.wait_for(again["id"], FINAL, timeout=300)
        assert again["state_type"] == "COMPLETED", again["state"]
        assert platform.report(again["id"])["description"].startswith(
            "restart-webs on lab: completed - 6 done")
        alb = dict(registered(lab))
        assert sorted(alb) == webs(lab) and set(alb.values()) == {"healthy"}, alb
        print(f"\ncrash: marked Crashed {detected:.0f} s after the kill, maintenance lock free "
              f"after {freed:.0f} s; the finishing run took {again['total_run_time']:.0f} s")
    finally:
        if not procs.read_pid(platform.home / "worker.pid"):
            start_worker(platform)
        put_back(lab, order)
