"""Trigger latency: from a REST call (POST /deployments/{id}/create_flow_run with basic auth, as
other systems trigger runs) to the run's first remote command, seen on the lab's side.

The run is fleet-status (read-only; it logs in to every host over SSH). The first remote
command is the first SSH connection any lab sshd logs afterwards (LogLevel VERBOSE: a
`Connection from ... port P` line, then `Accepted publickey ... port P` for a login; a port
that never logs in, such as a lab status probe, does not count). The logs carry no clock, so a
thread here reads them every 5 ms and stamps each new line (within ~5 ms of sshd writing it).
The platform's schedules are off: nothing else logs in meanwhile. Runs go one at a time, each
waited on to its end. The run's own states split the latency: created -> PENDING (the worker or
runner saw it: its polling), PENDING -> RUNNING (a new Python process started, Prefect and the
flow imported), RUNNING -> first connection (the flow's own start).

Set-ups, measured in the same run on the same server:
- worker: the platform as dwops ships it (`dwops up`: the `dwops` process work pool, one
  worker, PREFECT_WORKER_QUERY_SECONDS=1);
- serve(): the worker stopped and the deployments deleted, the same flows served by Prefect's
  Runner in one process (benchmarks/serve_flows.py, as `flow.serve()` does: each run a
  subprocess of it) with PREFECT_RUNNER_POLL_FREQUENCY=1 (its default is 10 s).
The serve() part replaces the platform's deployments with served ones, so this section runs
last; the platform is torn down after it.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from benchmarks.common import Figure, Section, percentile
from benchmarks.private import PROJECT, Private, using_platform

TARGET = 3.0  # s, median
FLOW = "fleet-status"
CONNECTION = re.compile(r"Connection from \S+ port (\d+) on (\S+) port")
ACCEPTED = re.compile(r"Accepted publickey for \S+ from \S+ port (\d+)")


def run(args) -> Section:
    n = max(20, getattr(args, "triggers", 20) or 20)
    section = Section(f"trigger: REST create_flow_run of {FLOW} to its first SSH login")
    results: dict[str, list[dict]] = {}
    with using_platform(args) as p:
        results["worker"] = _series(p, n)
        p.stop_worker()
        for d in p.ok("POST", "/deployments/filter", {}):  # serve() registers its own
            p.ok("DELETE", f"/deployments/{d['id']}")
        with _served(p, poll=1) as log:
            _wait_served(p, log)
            results["serve"] = _series(p, n)
    for setup, rs in results.items():
        ok = [r for r in rs if r.get("latency") is not None]
        if len(ok) < len(rs):
            section.notes.append(f"{setup}: {len(rs) - len(ok)} of {len(rs)} triggers saw no "
                                 f"SSH login: {[r.get('error') for r in rs if 'error' in r][:3]}")
        if not ok:
            continue
        lat = [r["latency"] for r in ok]
        section.figures += [
            Figure(f"{setup}: REST call -> first SSH connection", lat,
                   note=f"p90 {percentile(lat, 90):.2f} s"),
            Figure(f"  {setup}: created -> PENDING (picked up)", [r["pickup"] for r in ok]),
            Figure(f"  {setup}: PENDING -> RUNNING (process start, imports)",
                   [r["start"] for r in ok]),
            Figure(f"  {setup}: RUNNING -> first SSH connection (flow start)",
                   [r["flow"] for r in ok]),
            Figure(f"  {setup}: REST call answered", [r["api"] for r in ok]),
        ]
        med = statistics.median(lat)
        section.targets.append((f"{setup}: median trigger latency < {TARGET:g} s", med < TARGET,
                                f"median {med:.2f} s, p90 {percentile(lat, 90):.2f} s, n={len(lat)}"))
    if all(any(r.get("latency") for r in results.get(s, [])) for s in ("worker", "serve")):
        w = statistics.median(r["latency"] for r in results["worker"] if r.get("latency"))
        s = statistics.median(r["latency"] for r in results["serve"] if r.get("latency"))
        section.ratios.append(("worker / serve() median latency", w / s))
    section.notes.append(f"{n} triggers per set-up, one at a time; lab-side detection polls the "
                         "sshd logs every 5 ms")
    return section


class SshdWatch(threading.Thread):
    """Stamps every new line of the lab's sshd logs with the time it was first seen."""

    def __init__(self):
        super().__init__(daemon=True)
        from lab import services
        from lab.config import LabConfig, state_dir

        cfg = LabConfig.load(state_dir() / "lab" / "lab.json")
        self.files = {h.name: Path(services.find(cfg, "sshd", h.name).logfile) for h in cfg.hosts}
        self.offsets = {h: f.stat().st_size for h, f in self.files.items()}
        self.lines: list[tuple[float, str, str]] = []  # (seen at, host, line)
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stopping.wait(0.005):
            for h, f in self.files.items():
                try:
                    size = f.stat().st_size
                except OSError:
                    continue
                if size <= self.offsets[h]:
                    continue
                now = time.time()
                with f.open("rb") as fh:
                    fh.seek(self.offsets[h])
                    chunk = fh.read(size - self.offsets[h])
                cut = chunk.rfind(b"\n") + 1
                self.offsets[h] += cut
                with self.lock:
                    self.lines += [(now, h, line) for line in
                                   chunk[:cut].decode(errors="replace").splitlines()]

    def first_login(self, since: float) -> tuple[float, float, str] | None:
        """(connection seen at, login seen at, host) of the first connection since `since`
        that logged in."""
        with self.lock:
            lines = [x for x in self.lines if x[0] >= since]
        conns: dict[tuple[str, str], float] = {}
        logins = []
        for at, h, line in lines:
            if m := CONNECTION.search(line):
                conns.setdefault((h, m.group(1)), at)
            elif (m := ACCEPTED.search(line)) and (h, m.group(1)) in conns:
                logins.append((conns[(h, m.group(1))], at, h))
        return min(logins) if logins else None


def _series(p: Private, n: int) -> list[dict]:
    watch = SshdWatch()
    watch.start()
    try:
        p.deployment(FLOW, fresh=True)
        return [_one(p, watch) for _ in range(n)]
    finally:
        watch.stopping.set()
        watch.join(5)


def _one(p: Private, watch: SshdWatch) -> dict:
    time.sleep(0.5)  # the previous run's process is gone; its last lines are read
    t0 = time.time()
    try:
        created = p.create_run(FLOW)
    except RuntimeError as e:
        return {"latency": None, "error": str(e)}
    api = time.time() - t0
    try:
        p.wait_final(created["id"], timeout=180)
    except RuntimeError as e:
        return {"latency": None, "error": str(e)}
    time.sleep(0.05)
    seen = watch.first_login(t0)
    if not seen:
        return {"latency": None, "error": f"no SSH login seen for run {created['name']}"}
    states = {s["type"]: _ts(s["timestamp"]) for s in p.states(created["id"])}
    conn = seen[0]
    return {"latency": conn - t0, "api": api, "pickup": states["PENDING"] - t0,
            "start": states["RUNNING"] - states["PENDING"], "flow": conn - states["RUNNING"],
            "host": seen[2]}


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class _served:
    """`python -m benchmarks.serve_flows` against the platform's server, stopped on exit."""

    def __init__(self, p: Private, poll: float):
        self.p, self.poll = p, poll
        self.log = p.home / "serve.log"

    def __enter__(self) -> Path:
        env = dict(self.p.env)
        env.update(PREFECT_HOME=str(self.p.home), PREFECT_API_URL=self.p.api_url,
                   PREFECT_API_AUTH_STRING=self.p.credential,
                   PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
                   PREFECT_RUNNER_POLL_FREQUENCY=f"{self.poll:g}",
                   PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30", DWOPS_PROJECT_DIR=str(PROJECT),
                   DWOPS_INVENTORY="lab")
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.serve_flows"],
                                     cwd=PROJECT, env=env, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self.log

    def __exit__(self, *exc) -> None:
        for sig, wait in ((signal.SIGINT, 15), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:  # whatever it started, too
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_served(p: Private, log: Path, timeout: float = 120) -> None:
    """Until serve() has registered FLOW again and its runner has polled for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, d = p.api("GET", f"/deployments/name/{FLOW}/{FLOW}")
        d = d if status == 200 else None
        polled = d and d.get("last_polled")
        if polled and _ts(polled) > _ts(d["created"]):
            return
        time.sleep(0.5)
    raise RuntimeError(f"serve() did not register and poll {FLOW} in {timeout:g} s; see {log}")
