"""ensure-gearman: start any gearman job server that is down; restart running ones only on request.

The notes (Gearman): "If this goes down, it should be started back up." and "SSH to the servers
that run gearman and use the /etc/init.d/gearman-server script." A job server keeps its queue of
background jobs in memory: a restart loses every job it holds. So a running server is restarted
only with `restart=true`, after its queue has been read and reported, and only with
`accept_lost_jobs=true` when it holds jobs.

1. Load the inventory and check the requested hosts.
2. Plan: for each gearman host, start it if it is down (and with `restart=true`, restart it if
   it runs). Publish the plan; a dry run stops here.
3. Read every job server (admin `version` and `status`).
4. With `restart=true`: if any running server holds jobs and `accept_lost_jobs` is not given,
   refuse, naming every function and count that would be lost; nothing is touched.
5. For each server, in order: leave it alone if it answers and no restart was asked; otherwise
   (re-reading its queue right before a restart) run the init script, then verify it answers
   `version` and `status` within `verify_seconds` (after a restart, also that the functions that
   had workers get a worker back). A failure halts the run; the servers after it are not touched.
6. Publish the report: per host what was done, the jobs lost (per function), readings before and
   after. Running it twice changes nothing the second time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prefect import flow, get_run_logger
from pydantic import Field, StrictBool, model_validator

from dwops.errors import Unavailable
from dwops.inventory import Inventory, resolve_inventory
from dwops.runbook import (HOST_LIST, ChangeParams, Gate, HostNames, Outcome, Plan, Report, Step,
                           finish, hosts_of, publish_plan)
from tasks.common import per_host
from tasks.gearman import (DEFAULT_PORT, GearmanProtocolError, GearmanReading, read_gearman,
                           restart_gearman, start_gearman)
from tasks.ssh import SshError, ssh_session

INIT_SCRIPT_SECONDS = 120  # an init script that takes longer than this is a failure

Reading = GearmanReading | Exception  # a reading, or why there is none


class EnsureGearmanParams(ChangeParams):
    hosts: HostNames = HOST_LIST
    restart: StrictBool = Field(False, description="also restart job servers that are running "
                                                   "(each loses the background jobs it holds in "
                                                   "memory)")
    accept_lost_jobs: StrictBool = Field(False, description="with restart: go ahead even when "
                                                            "servers hold queued jobs (the run "
                                                            "names them)")
    verify_seconds: float = Field(10, ge=1, le=120,
                                  description="how long a started server has to answer "
                                              "`version` and `status` (and, after a restart, "
                                              "to get its workers back)")

    @model_validator(mode="after")
    def _accept_only_with_restart(self) -> "EnsureGearmanParams":
        if self.accept_lost_jobs and not self.restart:
            raise ValueError("accept_lost_jobs=true only applies with restart=true "
                             "(starting a server that is down loses nothing)")
        return self

    def check_inventory(self, inventory: Inventory) -> None:
        hosts_of(inventory, "gearman", self.hosts)


@flow(name="ensure-gearman",
      description="Start any gearman job server that is down; restart running ones only "
                  "on request.")
async def ensure_gearman(params: EnsureGearmanParams = EnsureGearmanParams()) -> dict[str, Any]:
    log = get_run_logger()

    # 1. Inventory and hosts.
    inventory = resolve_inventory(params.inventory)
    params.check_inventory(inventory)
    hosts = hosts_of(inventory, "gearman", params.hosts)
    port = inventory.service("gearman").port or DEFAULT_PORT
    if params.reason:
        log.info("reason given: %s", params.reason)

    # 2. The plan.
    plan = plan_ensure_gearman(inventory.name, hosts, params.restart, params.accept_lost_jobs)
    await publish_plan(plan)
    report = Report("ensure-gearman", inventory.name, plan, dry_run=params.dry_run)
    if params.dry_run:
        log.info("dry run: plan published, nothing read or changed")
        return await finish(report, log)
    action = plan.steps[0].action

    async def read(h: str) -> Reading:
        """version + status; a reply that is not gearman's is a value to judge (not a crash),
        no answer raises `Unavailable` (per_host retries it once)."""
        try:
            return await read_gearman(inventory.host(h).address, port)
        except GearmanProtocolError as e:
            return e

    async def probe(h: str) -> Reading:
        """One read, its `Unavailable` as a value: for re-reads and polling."""
        try:
            return await read(h)
        except Unavailable as e:
            return e

    async with ssh_session(inventory):
        # 3. Read every job server.
        before = await per_host(hosts, read)
        for h, r in before.items():
            report.reading(f"{h} before", _figures(r))

        # 4. A restart never loses jobs that nobody accepted to lose.
        if params.restart:
            gate = report.gate(queued_jobs_may_be_lost(before, params.accept_lost_jobs))
            if not gate.ok:
                log.error("refusing to restart: %s", gate.reason)
                for h, r in before.items():
                    if isinstance(r, GearmanReading) and held_jobs(r):
                        report.record(h, action, Outcome.SKIPPED,
                                      f"not restarted: it would lose {describe_jobs(held_jobs(r))}")
                report.halt(f"refused: {gate.reason}")
                return await finish(report, log)
            log.info("restart may go ahead: %s", gate.reason)

        # 5. One server at a time: act only where needed, verify each.
        for h in hosts:
            reading = before[h]
            if isinstance(reading, GearmanProtocolError):
                why = f"answers on port {port}, but not as a job server: {reading}; not touched"
                log.error("%s: %s", h, why)
                report.record(h, action, Outcome.FAILED, why)
                report.halt(f"gearman on {h} answers but cannot be read")
                break

            down = gearman_is_down(h, reading)
            if down.ok or not params.restart:  # a running server's restart: the lost-jobs gate
                report.gate(down)
            if not down.ok and not params.restart:
                log.info("%s: %s; left alone", h, down.reason)
                report.record(h, action, Outcome.SKIPPED,
                              f"{down.reason}; not restarted (restart=false)")
                continue

            started = time.monotonic()
            lost: dict[str, dict[str, int]] = {}
            workers_wanted: list[str] = []
            if down.ok:
                log.warning("%s: gearman is down (%s); starting it", h, down.reason)
                change, verb = start_gearman, "started"
            else:
                # Re-read right before the restart: what this server holds now is what is lost.
                now = await probe(h)
                if isinstance(now, GearmanProtocolError):
                    why = f"answers, but not as a job server: {now}; not touched"
                    log.error("%s: %s", h, why)
                    report.record(h, action, Outcome.FAILED, why, started)
                    report.halt(f"gearman on {h} answers but cannot be read")
                    break
                if isinstance(now, GearmanReading):
                    again = report.gate(queued_jobs_may_be_lost({h: now}, params.accept_lost_jobs))
                    if not again.ok:
                        log.error("%s: not restarting: %s", h, again.reason)
                        report.record(h, action, Outcome.SKIPPED, f"not restarted: {again.reason}",
                                      started)
                        report.halt(f"refused: {again.reason}")
                        break
                    lost = held_jobs(now)
                    workers_wanted = [q.function for q in now.queues if q.workers]
                    report.reading(f"{h} jobs lost", {
                        "total": sum(j["waiting"] + j["running"] for j in lost.values()),
                        "functions": {f: j["waiting"] + j["running"] for f, j in lost.items()}})
                    log.warning("%s: restarting gearman (restart=true); %s", h,
                                f"accept_lost_jobs=true, losing {describe_jobs(lost)}" if lost
                                else "it holds no jobs, nothing is lost")
                    change, verb = restart_gearman, "restarted"
                else:  # it went down since the first read: starting it loses nothing
                    log.warning("%s: gearman stopped answering since the first read (%s); "
                                "starting it", h, now)
                    change, verb = start_gearman, "started"

            try:
                result = await change(inventory, h, timeout=INIT_SCRIPT_SECONDS)
                ran = (f"init script exited {result.exit_status}: "
                       f"{(result.stderr or result.stdout).strip()[:200]}"
                       if result.exit_status else "")
            except SshError as e:
                ran = f"init script did not run to the end: {e}"
            answer = await _wait_answering(probe, h, params.verify_seconds)
            if ran or isinstance(answer, Exception):
                why = ran or f"{verb}, but no answer within {params.verify_seconds:g} s: {answer}"
                if lost:
                    why += f" (the jobs it held are lost: {describe_jobs(lost)})"
                log.error("%s: %s", h, why)
                report.record(h, action, Outcome.FAILED, why, started)
                report.reading(f"{h} after", _figures(answer))
                report.halt(f"gearman on {h} did not come up")
                break

            if verb == "restarted":  # its workers were connected: they must come back
                answer = await _wait_workers(probe, h, workers_wanted, answer,
                                             params.verify_seconds)
                health = report.gate(workers_are_back(h, answer, workers_wanted))
            else:
                health = Gate("workers are back", True, "started from down: no workers to expect")
            report.reading(f"{h} after", _figures(answer))
            if not health.ok:
                why = f"{verb} and answers, but {health.reason}"
                if lost:
                    why += f"; lost {describe_jobs(lost)}"
                log.error("%s: %s", h, why)
                report.record(h, action, Outcome.FAILED, why, started)
                report.halt(f"gearman on {h} has no workers back")
                break
            detail = (f"{verb}; answers version and status ({_server(answer)}, "
                      f"{sum(q.waiting for q in answer.queues)} waiting)")
            if verb == "restarted":
                detail += (f"; lost {describe_jobs(lost)}" if lost else "; it held no jobs")
                detail += f"; {health.reason}"
            log.info("%s: %s", h, detail)
            report.record(h, action, Outcome.DONE, detail, started)

    # 6. The report.
    return await finish(report, log)


# -- the plan and the guards (pure) --------------------------------------------------------------

def plan_ensure_gearman(inventory: str, hosts: list[str], restart: bool,
                        accept_lost_jobs: bool) -> Plan:
    """What the run will do, before anything is read."""
    if restart:
        steps = [Step(h, "start or restart",
                      "read its queue; gearman.restart if it runs, gearman.start if down; "
                      "verify version + status and its workers back") for h in hosts]
        gates = ["the queue of every running server is read and reported before any restart",
                 "a server holding jobs is restarted only with accept_lost_jobs=true"
                 + (" (given)" if accept_lost_jobs else " (not given: the run refuses if any)"),
                 "one server at a time; the first failure halts the run"]
        notes = ["a restart loses every job the server holds in memory"]
    else:
        steps = [Step(h, "start if down", "gearman.start, then verify version + status")
                 for h in hosts]
        gates = ["a server that answers `version` and `status` is never touched",
                 "one server at a time; the first failure halts the run"]
        notes = []
    return Plan("ensure-gearman", inventory, steps, gates, notes)


def gearman_is_down(host: str, reading: Reading) -> Gate:
    """A server that does not answer may be started; one that answers is running."""
    if isinstance(reading, GearmanReading):
        jobs = held_jobs(reading)
        return Gate("gearman is down", False,
                    f"answers ({_server(reading)}, {_count(len(reading.queues), 'function')}, "
                    f"holds {describe_jobs(jobs) if jobs else 'no jobs'})",
                    {"host": host})
    return Gate("gearman is down", True, f"no answer: {reading}", {"host": host})


def queued_jobs_may_be_lost(readings: dict[str, Reading], accepted: bool) -> Gate:
    """A restart loses the jobs a server holds: only with none held, or the loss accepted."""
    held = {h: held_jobs(r) for h, r in readings.items() if isinstance(r, GearmanReading)}
    held = {h: jobs for h, jobs in held.items() if jobs}
    figures = {h: {f: j["waiting"] + j["running"] for f, j in jobs.items()}
               for h, jobs in held.items()}
    if not held:
        return Gate("no queued jobs lost", True, "no running server holds jobs: a restart loses "
                                                 "nothing", figures)
    what = "; ".join(f"{h}: {describe_jobs(jobs)}" for h, jobs in held.items())
    down = [h for h, r in readings.items() if not isinstance(r, GearmanReading)]
    if accepted:
        return Gate("no queued jobs lost", True, f"accept_lost_jobs=true: will lose {what}",
                    figures)
    hint = (f"; {', '.join(down)} down: run without restart=true to start "
            f"{'it' if len(down) == 1 else 'them'}" if down else "")
    return Gate("no queued jobs lost", False,
                f"a restart would lose {what}; pass accept_lost_jobs=true to accept that{hint}",
                figures)


def workers_are_back(host: str, reading: GearmanReading, wanted: list[str]) -> Gate:
    """After a restart, every function that had workers has at least one again."""
    workers = {q.function: q.workers for q in reading.queues}
    missing = [f for f in wanted if not workers.get(f)]
    if missing:
        return Gate("workers are back", False,
                    f"no worker registered again for {', '.join(missing)}", {"host": host})
    if not wanted:
        return Gate("workers are back", True, "no function had workers before", {"host": host})
    return Gate("workers are back", True,
                "workers back: " + ", ".join(f"{f} {workers[f]}" for f in wanted), {"host": host})


def held_jobs(reading: GearmanReading) -> dict[str, dict[str, int]]:
    """function -> waiting and running jobs, for the functions the server holds jobs of."""
    return {q.function: {"waiting": q.waiting, "running": q.running}
            for q in reading.queues if q.total}


def describe_jobs(jobs: dict[str, dict[str, int]]) -> str:
    """'5 jobs (dw_x: 5 waiting; dw_y: 1 waiting, 2 running)'."""
    total = sum(j["waiting"] + j["running"] for j in jobs.values())
    parts = []
    for f, j in jobs.items():
        counts = [f"{j['waiting']} waiting"] if j["waiting"] else []
        counts += [f"{j['running']} running"] if j["running"] else []
        parts.append(f"{f}: {', '.join(counts)}")
    return f"{_count(total, 'job')} ({'; '.join(parts)})"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# -- helpers ------------------------------------------------------------------------------------

async def _wait_answering(read, host: str, seconds: float) -> Reading:
    """Poll `version` + `status` until the server answers or `seconds` have passed."""
    deadline = time.monotonic() + seconds
    while True:
        answer = await read(host)
        if isinstance(answer, GearmanReading) or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.2)


async def _wait_workers(read, host: str, functions: list[str], answer: GearmanReading,
                        seconds: float) -> GearmanReading:
    """Poll `status` until every function in `functions` has a worker, or `seconds` have passed;
    the last good reading."""
    deadline = time.monotonic() + seconds
    while not workers_are_back(host, answer, functions).ok and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        now = await read(host)
        if isinstance(now, GearmanReading):
            answer = now
    return answer


def _server(r: GearmanReading) -> str:
    return f"{r.version.kind} {r.version.version}"


def _figures(r: Reading) -> dict[str, Any]:
    if not isinstance(r, GearmanReading):
        return {"up": False, "error": str(r)}
    return {"up": True, "server": _server(r),
            "waiting": sum(q.waiting for q in r.queues),
            "functions": {q.function: f"{q.total} total, {q.running} running, {q.workers} workers"
                          for q in r.queues}}
