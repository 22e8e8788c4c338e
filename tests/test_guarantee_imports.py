"""Guarantee 2: imports are never interrupted.

Repeated restart-workers runs while imports of random kind and length keep starting and finishing
on both jobs hosts (this test's own bounded feeder: Poisson arrivals, lengths 1-8 s), and a burst
of imports longer than the worker-manager's 10 s grace the moment a restart begins to stop the
first jobs host's workers, while the other host's importers are still the old ones: the worst
moment (bin/restart-jobs restarts the hosts one after the other). Ground truth
is the lab's: every import this test enqueues has a `dw_lab.import_run` row that ends `done` or
`interrupted` (the worker-manager marks an import it killed), and the managers' counters of
interrupted imports.

CI runs 1 restart (about 90 s). The soak is the same test with more:
`DWOPS_SOAK_RUNS=20 scripts/test tests/test_guarantee_imports.py` (README, "Soak").
"""

from __future__ import annotations

import os
import random
import threading
import time
from datetime import datetime, timedelta, timezone
from datetime import time as dt_time

import pytest

from lab import jobs as schwartz
from lab import procs
from lab.config import LabConfig
from test_flow_restart_workers import (FLOW, children, conn, import_run, interrupted,  # noqa: F401
                                       jobs_hosts, quiet_lab, ready_manager, unique,
                                       wait_no_imports)
from test_lab_workers import wait_for

pytestmark = pytest.mark.lab

RUNS = int(os.environ.get("DWOPS_SOAK_RUNS", "1"))
RATE = 0.3  # imports started per second, in the background
LENGTH = (1.0, 8.0)  # seconds a background import takes
BURST = 3  # imports enqueued the moment the first jobs host's workers start to stop ...
BURST_LENGTH = (12.0, 20.0)  # ... longer than the manager's 10 s grace: the worst moment
KINDS = ("entries", "comments", "userpics", "friends", "tags")
MAX_IMPORTS = 2000  # the feeder stops by itself, whatever happens to the test


def clock(hms: str) -> float:
    """A report reading's time of day (UTC, `HH:MM:SS`) as a Unix time: today's, or yesterday's
    when that would be in the future (a run across midnight)."""
    now = datetime.now(timezone.utc)
    t = datetime.combine(now.date(), dt_time.fromisoformat(hms), timezone.utc)
    return (t - timedelta(days=1) if t > now + timedelta(minutes=1) else t).timestamp()


class ImportFeeder(threading.Thread):
    """Enqueues imports at Poisson times until stopped (or MAX_IMPORTS); remembers each one."""

    def __init__(self, lab: LabConfig, seed: int):
        super().__init__(daemon=True, name="import-feeder")
        self.lab, self.rng = lab, random.Random(seed)
        self.done = threading.Event()
        self.jobids: list[int] = []
        self.error: BaseException | None = None
        self.bursts = 0

    def run(self) -> None:
        first = jobs_hosts(self.lab)[0]
        manager, workers = None, 0
        due = time.monotonic() + self.rng.expovariate(RATE)
        try:
            while not self.done.wait(0.02) and len(self.jobids) < MAX_IMPORTS:
                if manager is not None and (not procs.pid_alive(manager) or
                                            len(children(manager)) < workers):
                    # The first jobs host's workers are being stopped: a restart has begun,
                    # after the flow's last read, while the other host's are still the old ones.
                    self.bursts += 1
                    for _ in range(BURST):
                        self.enqueue(BURST_LENGTH)
                    manager = None
                if manager is None and (pid := ready_manager(self.lab, first)):
                    manager, workers = pid, len(children(pid))
                if time.monotonic() >= due:
                    self.enqueue(LENGTH)
                    due = time.monotonic() + self.rng.expovariate(RATE)
        except BaseException as e:  # reported by the test, not lost in a thread
            self.error = e

    def enqueue(self, length: tuple[float, float]) -> None:
        self.jobids.append(schwartz.enqueue_import(
            self.lab, unique("soak"), self.rng.randint(1, 9999),
            round(self.rng.uniform(*length), 1), self.rng.choice(KINDS)))

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def test_repeated_restarts_while_imports_come_and_go_interrupt_none(
        quiet_lab: LabConfig, conn, dwops_run):  # noqa: F811 (the imported fixtures)
    lab = quiet_lab
    wait_no_imports(lab, conn)
    counted = interrupted(lab)
    feeder = ImportFeeder(lab, seed=int(time.time()))
    windows: list[tuple[float, float]] = []  # each restart's (restart begins, workers back)
    waited: list[float] = []
    feeder.start()
    try:
        for n in range(RUNS):
            rc, report, err = dwops_run(FLOW, "max_wait=180", "poll_seconds=1",
                                        "queue_drain_seconds=5", "queue_slack=50")
            assert rc == 0, (n, report and report["halted"], err[-2000:])
            when = {r["what"]: clock(r["when"]) for r in report["readings"]}
            begins = max(when[f"{h} held"] for h in jobs_hosts(lab))
            back = max(when[f"{h} after"] for h in jobs_hosts(lab))
            windows.append((begins, back))
            idle = [g for g in report["gates"] if g["name"] == "importers are idle"]
            waited.append(sum(not g["ok"] for g in idle))
            assert feeder.error is None, feeder.error
    finally:
        feeder.stop()
    ours = list(feeder.jobids)
    try:
        rows = wait_for("every import to end", lambda: (
            r := {j: import_run(lab, conn, j) for j in ours}) and all(
            x is not None and x["status"] != "running" for x in r.values()) and r, 90, every=1)
    finally:
        with conn.cursor() as cur:  # none left for the next test, whatever happened
            cur.execute(f"DELETE FROM job WHERE jobid IN ({','.join(map(str, ours)) or '0'})")

    statuses = [r["status"] for r in rows.values()]
    during = [r for r in rows.values()
              if any(a <= r["started_at"].replace(tzinfo=timezone.utc).timestamp() <= b + 1 for a, b in windows)]
    print(f"\nguarantee 2: {RUNS} restarts, {len(ours)} imports ({statuses.count('done')} done, "
          f"{statuses.count('interrupted')} interrupted), {len(during)} started while a restart "
          f"was under way, busy reads before each restart: {waited}, restart windows: "
          + ", ".join(f"{b - a:.1f} s" for a, b in windows))
    assert statuses.count("interrupted") == 0, [
        (j, r["host"], r["kind"], str(r["started_at"]), r["status"])
        for j, r in rows.items() if r["status"] == "interrupted"]
    assert interrupted(lab) == counted
    assert feeder.bursts == RUNS, feeder.bursts  # every restart met a burst of long imports
    assert during, "no import started while the workers restarted: the race was not exercised"
