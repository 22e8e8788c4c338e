"""Cost: memory of the worker and of a flow run's process, CPU seconds of a fleet-status run.

- `dwops run fleet-status --json` (the flow run in the command's own process, against the
  private platform's server), waited on with os.wait4: its CPU seconds (user+sys, the whole
  command: Python, imports, the flow) and its peak RSS, exact from the kernel.
- fleet-status triggered through the REST API and run by the platform's worker: while it runs,
  /proc is read every 50 ms: the worker's own peak RSS (VmHWM), the peak RSS of the run's
  process (`python -m prefect.engine`, its VmHWM) and of the worker with all its children
  (the sum of their RSS at the worst sample), and the run process's CPU seconds (its last
  reading before it exits, so at most 50 ms short).
- The Prefect server's peak RSS (VmHWM), for scale.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from benchmarks.common import Figure, Section
from benchmarks.private import PROJECT, Private, read_pid, using_platform

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def run(args) -> Section:
    repeat = max(3, getattr(args, "repeat", 3) or 3)
    section = Section("cost: memory and CPU")
    with using_platform(args) as p:
        cli = [_dwops_run(p) for _ in range(repeat)]
        worker = [_worker_run(p) for _ in range(repeat)]
        server_hwm = _hwm(_pid(p, "server"))
    section.figures += [
        Figure("`dwops run fleet-status`: CPU user+sys (whole command)",
               [c["cpu"] for c in cli]),
        Figure("  of which user", [c["user"] for c in cli]),
        Figure("  wall", [c["wall"] for c in cli]),
        Figure("  peak RSS", [c["rss"] for c in cli], unit="B"),
    ]
    ok = [w for w in worker if w.get("run_rss")]
    if ok:
        section.figures += [
            Figure("worker: peak RSS of the worker process", [w["worker_hwm"] for w in ok],
                   unit="B"),
            Figure("worker: peak RSS, worker + its children during a run",
                   [w["tree_peak"] for w in ok], unit="B"),
            Figure("flow run process (fleet-status under the worker): peak RSS",
                   [w["run_rss"] for w in ok], unit="B"),
            Figure("flow run process: CPU user+sys", [w["run_cpu"] for w in ok]),
        ]
    if len(ok) < len(worker):
        section.notes.append(f"{len(worker) - len(ok)} worker runs not sampled: "
                             f"{[w.get('error') for w in worker if not w.get('run_rss')]}")
    if server_hwm:
        section.figures.append(Figure("Prefect server: peak RSS (whole benchmark)",
                                      [server_hwm], unit="B"))
    section.notes.append(f"{repeat} runs of each; fleet-status checks 40 things on 13 hosts")
    return section


def _dwops_run(p: Private) -> dict:
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "dwops.cli", "run", "fleet-status", "--json"],
                            cwd=PROJECT, env=p.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall": time.monotonic() - started, "cpu": usage.ru_utime + usage.ru_stime,
            "user": usage.ru_utime, "rss": usage.ru_maxrss * 1024, "rc": proc.returncode}


def _worker_run(p: Private) -> dict:
    worker = p.worker_pid()
    if not worker:
        return {"error": "no worker running"}
    sampler = _Sampler(worker)
    sampler.start()
    try:
        run = p.create_run("fleet-status")
        p.wait_final(run["id"], timeout=180)
        time.sleep(0.2)
    finally:
        sampler.stop.set()
        sampler.join(5)
    out = {"worker_hwm": _hwm(worker), "tree_peak": sampler.tree_peak}
    if sampler.runs:
        hwm, cpu = max(sampler.runs.values())
        out.update(run_rss=hwm, run_cpu=cpu)
    else:
        out["error"] = f"no flow run process seen for {run['name']}"
    return out


class _Sampler(threading.Thread):
    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.stop = root, threading.Event()
        self.tree_peak = 0
        self.runs: dict[int, tuple[int, float]] = {}  # pid -> (VmHWM, cpu seconds)

    def run(self) -> None:
        from lab.procs import descendants

        while not self.stop.wait(0.05):
            total = 0
            for pid in descendants({self.root}):
                rss, hwm = _status(pid)
                total += rss
                if pid != self.root and _is_run(pid):
                    self.runs[pid] = (hwm, _cpu(pid) or self.runs.get(pid, (0, 0.0))[1])
            self.tree_peak = max(self.tree_peak, total)


def _status(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes; zeros if it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, hwm


def _hwm(pid: int | None) -> int:
    return _status(pid)[1] if pid else 0


def _cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def _is_run(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"prefect.engine" in f.read()
    except OSError:
        return False


def _pid(p: Private, name: str) -> int | None:
    return read_pid(p.home / f"{name}.pid")
