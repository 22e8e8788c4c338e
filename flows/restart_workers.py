"""restart-workers: restart the job workers, never in the middle of an import unless a human
approves the loss in an emergency.

The notes (Workers): "as root on dfw-admin01: bin/restart-jobs. CAVEAT LECTOR: ... If you restart
workers while an import is in progress, it will cause that user's import to effectively pause
halfway for 12 hours until it gets retried later. ... `bin/importer-status` ... Note they're all
bored. That means you are safe to just restart the workers. ... (But if it's an emergency, just do
it.)"

1. Load the inventory: the jobs hosts (service `workers`) and the admin host that allows
   `restart_jobs`; bad parameters or inventory stop here.
2. Plan, published; a dry run stops here.
3. Read every jobs host's workers (`ps`): worker-manager, workers, content-importers. A jobs host
   that does not answer halts the run before any change.
4. Gate `importers_are_idle`. Busy, not an emergency: read again every `poll_seconds` for up to
   `max_wait` seconds; still busy, refuse: nothing is restarted, the report names the imports.
   Busy, an emergency: ask for approval (`--approve`, or a pause in Prefect) naming each import
   that would be lost and how long it would pause; no approval, nothing is restarted.
5. Read TheSchwartz: the ready queue (the baseline) and the import jobs grabbed right now.
6. Hold the importers still: SIGSTOP every content-importer on every jobs host
   (`workers.freeze_importers`, which leaves a dead man's SIGCONT on the host), then read `ps`
   and TheSchwartz again. Every importer frozen, bored (or on an approved import), and no import
   job grabbed since step 5: no importer can start an import before the restart, so none is
   lost. Otherwise thaw them (`workers.thaw_importers`) and wait again within `max_wait` (an
   emergency refuses). Without this hold, bin/restart-jobs restarting the jobs hosts one after the
   other lets the second host's importers grab an import while the first restarts, and kill it
   10 s later (measured on the lab: 4 imports in 2 runs).
7. Restart once: `restart_jobs` on the admin host. Never retried. The frozen importers are idle;
   each worker-manager KILLs them after its 10 s grace. Every path that does not end in a
   verified restart thaws them.
8. Verify each jobs host within `verify_timeout`: a worker-manager with a new pid, every worker
   back with a new pid (importers bored, or busy with new imports).
9. Watch the ready queue for `queue_drain_seconds`: it must not grow (beyond `queue_slack`).
10. Publish the report: per host, with timings, gates and readings before and after.

Steps 3-10 hold the fleet-wide maintenance lock (dwops.maintenance): no other restart of webs,
memcached or workers reads or changes the fleet meanwhile; one that holds it refuses this run.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger
from pydantic import ConfigDict, Field

from dwops.approval import decide_emergency
from dwops.errors import Unavailable
from dwops.inventory import Inventory, resolve_inventory
from dwops.runbook import (maintenance, BadParameters, EmergencyParams, Gate, Outcome, Plan, Report, Step,
                           finish, publish_plan)
from tasks.common import attempt
from tasks.database import DatabaseRefused, read_grabbed_imports, read_schwartz_queue
from tasks.importers import ImporterProcess
from tasks.ssh import SshError, ssh_session
from tasks.workers import (WorkersReading, describe_import, freeze_commands_missing,
                           freeze_importers, import_pause, read_workers, restart_jobs_host,
                           thaw_importers)
from tasks.workers import restart_workers as restart_all_workers

FLOW = "restart-workers"
RESTART = "restart workers"
VERIFY = "verify workers"
QUEUE = "verify TheSchwartz queue"
GRAB_SETTLE_SECONDS = 2.0  # an importer shows an import in its title within ms of grabbing it


class RestartWorkersParams(EmergencyParams):
    model_config = ConfigDict(extra="forbid")  # a misspelt parameter is refused, not ignored

    max_wait: int = Field(600, ge=0, le=7200,
                          description="seconds to wait for busy content-importers to finish "
                                      "before refusing (the emergency path does not wait)")
    poll_seconds: float = Field(5, ge=1, le=60,
                                description="seconds between reads while waiting for importers, "
                                            "for the workers to come back and on the queue")
    verify_timeout: float = Field(90, ge=10, le=900,
                                  description="seconds every jobs host has after the restart to "
                                              "run a new worker-manager and all its workers")
    queue_drain_seconds: float = Field(30, ge=5, le=900,
                                       description="seconds to watch TheSchwartz's ready jobs "
                                                   "after the restart")
    queue_slack: int = Field(5, ge=0, le=10000,
                             description="ready jobs the queue may gain over the watch and still "
                                         "count as not growing (new jobs arrive all the time)")

    def check_inventory(self, inventory: Inventory) -> None:
        try:
            restart_jobs_host(inventory)
        except KeyError as e:
            raise BadParameters(e.args[0], "inventory") from None
        if missing := freeze_commands_missing(inventory):
            raise BadParameters(f"inventory {inventory.name!r}: services.workers needs the "
                                f"commands {' and '.join(missing)} (hold the importers still "
                                f"for the last read; see inventory/production.toml)", "inventory")


@dataclass(frozen=True)
class BusyImport:
    """A content-importer in the middle of an import, on a jobs host."""

    host: str
    importer: ImporterProcess

    @property
    def key(self) -> tuple[str, int, str, int | None]:
        """What identifies this import while it runs (its progress changes)."""
        return (self.host, self.importer.pid, self.importer.state, self.importer.userid)

    def describe(self) -> str:
        return f"{self.host} pid {self.importer.pid} {describe_import(self.importer)}"


@flow(name=FLOW, description="Restart the job workers (bin/restart-jobs) when every "
                             "content-importer is bored, or in an approved emergency.")
async def restart_workers(params: RestartWorkersParams = RestartWorkersParams()) -> dict[str, Any]:
    log = get_run_logger()

    # 1. Inventory, jobs hosts and the admin host with restart_jobs.
    inventory = resolve_inventory(params.inventory)
    params.check_inventory(inventory)
    hosts = inventory.hosts_for("workers")
    admin = restart_jobs_host(inventory)
    db = inventory.database.address

    # 2. The plan.
    plan = plan_restart(inventory.name, admin, hosts, db, params)
    await publish_plan(plan)
    report = Report(FLOW, inventory.name, plan, dry_run=params.dry_run)
    if params.reason:
        report.reading("reason", {"reason": params.reason})
    log.info("plan: %s", "; ".join(f"{s.host}: {s.action}" for s in plan.steps))
    if params.dry_run:
        log.info("dry run: plan published, nothing read or changed")
        return await finish(report, log)

    async with maintenance(report), ssh_session(inventory):
        # 3. Every jobs host's workers.
        readings = await _read_or_halt(inventory, report, log, "before")
        if readings is None:
            return await finish(report, log)
        for h, r in readings.items():
            report.reading(f"{h} before", workers_figures(r))

        # 4. Are the importers idle? Wait, refuse, or ask for the emergency's approval.
        approved = await _importers_idle_or_approved(inventory, report, log, params, readings)
        if approved is None:
            return await finish(report, log)

        # 5. TheSchwartz before the restart: the ready jobs, and the imports grabbed now.
        schwartz = await _read_schwartz(inventory)
        if isinstance(schwartz, Exception):
            log.error("cannot read TheSchwartz: %s; not restarting", schwartz)
            report.reading("TheSchwartz before", {"error": str(schwartz)})
            report.halt(f"cannot read TheSchwartz's queue ({schwartz}): the restart could "
                        f"not be verified; nothing restarted")
            return await finish(report, log)
        before_ready, grabbed = schwartz
        report.reading("TheSchwartz before", {"ready": before_ready,
                                              "imports_grabbed": sorted(grabbed)})

        # 6. Hold the importers still for the last read; thawed on every path but a restart.
        held = await _hold_importers(inventory, report, log, params, approved, grabbed)
        if held is None:
            return await finish(report, log)

        # 7-8. The restart, once, and every jobs host's workers back, all new.
        restarted = False
        try:
            restarted = await _restart_and_verify(inventory, report, log, params, admin, held)
        finally:
            if not restarted:  # a frozen importer the restart did not replace goes on
                await _thaw(inventory, report, log, "after the restart did not complete")
        if not restarted:
            return await finish(report, log)

        # 9. TheSchwartz's ready queue drains (still under the lock: no other restart moves it).
        await _watch_queue(inventory, report, log, params, before_ready, db)

        # 10. The report.
        return await finish(report, log)


# -- the plan and the gates (pure) -----------------------------------------------------------------

def plan_restart(inventory: str, admin: str, hosts: list[str], db: str,
                 params: RestartWorkersParams) -> Plan:
    """What the run will do, before it reads anything."""
    busy_rule = ("busy: ask for approval naming every import it would lose (--approve or the "
                 "Prefect UI); no approval: nothing restarted" if params.emergency else
                 f"busy: read again every {params.poll_seconds:g} s for up to "
                 f"{params.max_wait} s, then refuse")
    return Plan(
        FLOW, inventory,
        [Step(admin, RESTART, "restart_jobs (bin/restart-jobs), once, never retried: every "
                              "jobs host's worker-manager, workers and content-importers"),
         *[Step(h, VERIFY, f"within {params.verify_timeout:g} s: a new worker-manager pid, "
                           "every worker back with a new pid, importers bored or on new imports")
           for h in hosts],
         Step(db, QUEUE, f"ready jobs not growing over {params.queue_drain_seconds:g} s "
                         f"(slack {params.queue_slack})")],
        gates=["every jobs host answers `ps` (else halt, nothing changed)",
               f"importers_are_idle: every content-importer `[bored]`; {busy_rule}",
               "importers_are_held: every content-importer frozen (SIGSTOP) for the last read, "
               "bored (or on an approved import), no import job grabbed since the read before; "
               "else thawed and, within max_wait, waited for again (an emergency refuses)",
               "after: workers_came_back on every jobs host; schwartz_queue_is_draining"],
        notes=["The notes: restarting workers during an import pauses that user's import for "
               "12 hours (entries; comments 72 h).",
               "The importers stay frozen from the last read to the restart, so no import can "
               "start in between; each worker-manager KILLs its frozen, idle importers after "
               "its 10 s grace. A frozen host thaws by itself 2 minutes later whatever happens "
               "to this run."]
        + (["EMERGENCY run: busy imports are lost only with a human's approval."]
           if params.emergency else []))


def busy_imports(readings: dict[str, WorkersReading]) -> list[BusyImport]:
    return [BusyImport(h, p) for h, r in readings.items() for p in r.busy]


def importers_are_idle(readings: dict[str, WorkersReading],
                       approved: frozenset = frozenset()) -> Gate:
    """Every content-importer is bored (or busy with an import whose loss was approved)."""
    busy = busy_imports(readings)
    unapproved = [b for b in busy if b.key not in approved]
    total = sum(len(r.importers) for r in readings.values())
    figures = {"importers": total, "busy": [b.describe() for b in busy]}
    if unapproved:
        return Gate("importers are idle", False,
                    f"{len(unapproved)} of {total} content-importers busy: "
                    + "; ".join(b.describe() for b in unapproved), figures)
    if busy:
        return Gate("importers are idle", True,
                    f"only approved imports busy ({_names(busy)}); no other import started",
                    figures)
    return Gate("importers are idle", True,
                f"all {total} content-importers bored on {', '.join(readings)}", figures)


def importers_are_held(readings: dict[str, WorkersReading], approved: frozenset,
                       grabbed_before: frozenset[int], grabbed_now: frozenset[int]) -> Gate:
    """The last read before the restart, taken with every content-importer frozen: each one is
    stopped (`T`), bored or on an approved import, and TheSchwartz shows no import job grabbed
    since the read before the freeze (an importer frozen between grabbing a job and showing it
    in its title would hide it from `ps`)."""
    idle = importers_are_idle(readings, approved)
    running = [f"{h} pid {p.pid}" for h, r in readings.items() for p in r.importers
               if not p.frozen]
    new = sorted(grabbed_now - grabbed_before)
    figures = {**idle.readings, "not_frozen": running, "grabbed_since": new}
    problems = []
    if running:
        problems.append(f"not frozen: {', '.join(running)} (started since the freeze?)")
    if not idle.ok:
        problems.append(idle.reason)
    if new:
        problems.append(f"import job(s) {', '.join(map(str, new))} grabbed since the last read")
    if problems:
        return Gate("importers are held", False, "; ".join(problems), figures)
    total = sum(len(r.importers) for r in readings.values())
    return Gate("importers are held", True,
                f"all {total} content-importers frozen; {idle.reason}; no import grabbed since "
                f"the last read", figures)


def what_is_lost(busy: list[BusyImport]) -> str:
    """The approval form's text: each import the restart would kill, and for how long it pauses."""
    lines = [f"Restarting the workers now kills {len(busy)} busy content-import(s): "
             "bin/worker-manager KILLs a worker still busy 10 s after TERM, and the production "
             "notes say the user's import then pauses halfway for 12 hours until it is retried."]
    for b in busy:
        p = b.importer
        who = f"{p.user}({p.userid})" if p.user else f"unknown user (title {p.title!r})"
        lines.append(f"- {who}: {p.state} import on {b.host} (pid {p.pid})"
                     + (f", at {p.progress}" if p.progress else "")
                     + f": pauses for {import_pause(p.state)}")
    return "\n".join(lines)


def workers_came_back(host: str, before: WorkersReading, after: WorkersReading) -> Gate:
    """After the restart: one worker-manager with a new pid, at least as many of every worker as
    before, none of them with an old pid (importers bored or busy with new imports)."""
    problems = []
    new_manager = [p for p in after.manager_pids if p not in before.manager_pids]
    if not after.manager_pids:
        problems.append("no worker-manager running")
    elif not new_manager or len(after.manager_pids) > 1:
        problems.append(f"worker-manager pid {', '.join(map(str, after.manager_pids))} "
                        f"(before: {', '.join(map(str, before.manager_pids)) or 'none'})")
    counts = after.worker_counts()
    missing = {n: f"{counts.get(n, 0)}/{k}" for n, k in before.worker_counts().items()
               if counts.get(n, 0) < k}
    if missing:
        problems.append("not back yet: " + ", ".join(f"{n} {c}" for n, c in missing.items()))
    old = sorted(after.worker_pids & before.worker_pids)
    if old:
        problems.append(f"old worker pids still running: {', '.join(map(str, old))}")
    figures = {"manager_pid": after.manager_pids, "workers": counts,
               "importers": [f"{p.pid} {p.state}" for p in after.importers]}
    if problems:
        return Gate(f"workers came back on {host}", False, "; ".join(problems), figures)
    busy = [describe_import(p) for p in after.busy]
    return Gate(f"workers came back on {host}", True,
                f"new worker-manager pid {new_manager[0]}; {len(after.workers)} workers, all new "
                f"pids; importers: {len(after.importers) - len(busy)} bored"
                + (f", {len(busy)} on new imports ({'; '.join(busy)})" if busy else ""), figures)


def schwartz_queue_is_draining(before: int, samples: list[int], seconds: float,
                               slack: int) -> Gate:
    """TheSchwartz's ready jobs do not grow (beyond `slack`) over the watch after the restart."""
    first, last = samples[0], samples[-1]
    figures = {"ready_before_restart": before, "samples": samples, "seconds": round(seconds, 1)}
    trend = ("going down" if last < first else "steady" if last == first else
             f"up {last - first}")
    reason = (f"ready jobs {first} -> {last} over {seconds:.0f} s ({trend}; slack {slack}); "
              f"{before} before the restart")
    return Gate("TheSchwartz queue is draining", last <= first + slack, reason, figures)


def workers_figures(r: WorkersReading | Exception) -> dict[str, Any]:
    if isinstance(r, Exception):
        return {"error": str(r)}
    return {"manager_pid": list(r.manager_pids), "workers": r.worker_counts(),
            "worker_pids": sorted(r.worker_pids),
            "importers_bored": len(r.importers) - len(r.busy),
            "busy": [f"pid {p.pid} {describe_import(p)}" for p in r.busy]}


def _names(busy: list[BusyImport]) -> str:
    return "; ".join(b.describe() for b in busy) or "none"


# -- the steps ------------------------------------------------------------------------------------

async def _restart_and_verify(inventory: Inventory, report: Report, log: Any,
                              params: RestartWorkersParams, admin: str,
                              before: dict[str, WorkersReading]) -> bool:
    """`restart_jobs` once (never retried), then every jobs host's workers back, all new. False
    (the report halted) when the restart failed or the workers did not come back."""
    lost = busy_imports(before)
    log.warning("restarting every jobs host's workers: %s on %s", "restart_jobs", admin)
    started = time.monotonic()
    try:
        result = await restart_all_workers(inventory)
        failure = (None if result.ok else
                   f"restart_jobs exited {result.exit_status}: "
                   f"{(result.stderr or result.stdout).strip()[-300:]}")
    except SshError as e:
        failure = f"{e} (not retried: the workers' state is read instead)"
    if failure:
        report.record(admin, RESTART, Outcome.FAILED, failure, started)
        for h, r in (await read_workers(inventory)).items():
            report.reading(f"{h} after the failed restart", workers_figures(r))
        log.error("restart failed: %s", failure)
        report.halt(f"the restart failed on {admin}: {failure}")
        return False
    detail = (f"restart_jobs exited 0 in {result.seconds:.1f} s (the frozen idle importers "
              f"KILLed by each worker-manager after its 10 s grace)")
    if lost:
        detail += f"; approved loss of: {_names(lost)}"
    report.record(admin, RESTART, Outcome.DONE, detail, started)
    log.info("%s: %s", admin, detail)
    return await _verify_workers(inventory, report, log, params, before, time.monotonic())


async def _read_or_halt(inventory: Inventory, report: Report, log: Any,
                        when: str) -> dict[str, WorkersReading] | None:
    """Every jobs host's workers, or None (and the report halted) if a host did not answer."""
    readings = await read_workers(inventory)
    bad = {h: r for h, r in readings.items() if isinstance(r, Exception)}
    if bad:
        for h, r in bad.items():
            report.reading(f"{h} {when}", workers_figures(r))
        why = "; ".join(str(r) for r in bad.values())
        log.error("cannot read the workers (%s): %s; nothing restarted", when, why)
        report.halt(f"jobs host unreachable ({why}); nothing restarted")
        return None
    return readings  # type: ignore[return-value]


async def _importers_idle_or_approved(inventory: Inventory, report: Report, log: Any,
                                      params: RestartWorkersParams,
                                      readings: dict[str, WorkersReading]) -> frozenset | None:
    """The imports whose loss is approved (none when every importer is bored), or None when the
    run must stop: still busy after `max_wait`, or an emergency without approval."""
    gate = importers_are_idle(readings)
    log.info("%s: %s", gate.name, gate.reason)
    if gate.ok:
        if params.emergency:
            log.info("emergency run, but every importer is bored: no approval needed")
        return frozenset()
    report.gate(gate)
    if not params.emergency:
        readings_after, gate = await _wait_for_idle(inventory, report, log, params, readings)
        if readings_after is None:
            return None
        if not gate.ok:
            log.error("refusing to restart: %s", gate.reason)
            report.halt(f"refused: content-importers still busy after waiting "
                        f"{params.max_wait} s ({gate.reason}); nothing restarted")
            return None
        return frozenset()
    busy = busy_imports(readings)
    lost = what_is_lost(busy)
    decision = await decide_emergency(lost, log=log)
    ok, who = decision.approved, decision.reason
    report.gate(Gate("emergency approved", ok, f"{who}. {lost}",
                     {"busy": [b.describe() for b in busy]}))
    if not ok:
        log.error("emergency restart not approved (%s): nothing restarted", who)
        report.halt(f"emergency restart not approved ({who}); nothing restarted, "
                    f"busy imports kept: {_names(busy)}")
        return None
    log.warning("emergency restart approved (%s): these imports will be lost: %s",
                who, _names(busy))
    return frozenset(b.key for b in busy)


async def _wait_for_idle(inventory: Inventory, report: Report, log: Any,
                         params: RestartWorkersParams, readings: dict[str, WorkersReading]
                         ) -> tuple[dict[str, WorkersReading] | None, Gate]:
    """Read every `poll_seconds` until every importer is bored or `max_wait` has passed."""
    started = time.monotonic()
    gate = importers_are_idle(readings)
    seen = {b.key for b in busy_imports(readings)}
    while not gate.ok:
        waited = time.monotonic() - started
        if waited >= params.max_wait:
            gate = Gate(gate.name, False, f"{gate.reason} (after waiting {waited:.0f} s)",
                        gate.readings)
            report.gate(gate)
            return readings, gate
        log.info("waiting for busy importers (%.0f of %d s): %s", waited, params.max_wait,
                 gate.reason)
        await asyncio.sleep(min(params.poll_seconds, params.max_wait - waited))
        readings = await _read_or_halt(inventory, report, log, "while waiting")
        if readings is None:
            return None, gate
        gate = importers_are_idle(readings)
        busy = {b.key for b in busy_imports(readings)}
        if busy != seen and not gate.ok:  # other imports busy: worth a line in the report
            report.gate(gate)
        seen = busy
    log.info("importers idle after %.0f s: %s", time.monotonic() - started, gate.reason)
    report.gate(Gate(gate.name, True, f"{gate.reason} (after waiting "
                                      f"{time.monotonic() - started:.0f} s)", gate.readings))
    return readings, gate


async def _verify_workers(inventory: Inventory, report: Report, log: Any,
                          params: RestartWorkersParams, before: dict[str, WorkersReading],
                          restarted: float) -> bool:
    """Poll every jobs host until its workers came back, all new, or `verify_timeout` passed."""
    pending = list(before)
    last: dict[str, Gate | Exception] = {}
    deadline = restarted + params.verify_timeout
    while pending:
        readings = await read_workers(inventory)
        for h in list(pending):
            r = readings[h]
            if isinstance(r, Exception):
                last[h] = r
                continue
            gate = workers_came_back(h, before[h], r)
            last[h] = gate
            if gate.ok:
                report.gate(gate)
                report.reading(f"{h} after", workers_figures(r))
                report.record(h, VERIFY, Outcome.DONE, gate.reason, restarted)
                log.info("%s: %s", h, gate.reason)
                pending.remove(h)
        if pending and time.monotonic() >= deadline:
            break
        if pending:
            await asyncio.sleep(min(params.poll_seconds, 1.0))
    if not pending:
        return True
    for h in pending:
        why = last.get(h)
        reason = why.reason if isinstance(why, Gate) else f"unreachable: {why}"
        if isinstance(why, Gate):
            report.gate(why)
        report.record(h, VERIFY, Outcome.FAILED,
                      f"not back within {params.verify_timeout:g} s: {reason}", restarted)
        log.error("%s: workers not back within %g s: %s", h, params.verify_timeout, reason)
    report.halt(f"workers did not come back on {', '.join(pending)} within "
                f"{params.verify_timeout:g} s")
    return False


async def _read_schwartz(inventory: Inventory) -> tuple[int, frozenset[int]] | Exception:
    """TheSchwartz's ready jobs and the import jobs grabbed now, or the error that stopped it."""
    ready = await _ready_jobs(inventory)
    if isinstance(ready, Exception):
        return ready
    try:
        return ready, await attempt(lambda: read_grabbed_imports(inventory))
    except (Unavailable, DatabaseRefused) as e:
        return e


async def _hold_importers(inventory: Inventory, report: Report, log: Any,
                          params: RestartWorkersParams, approved: frozenset,
                          grabbed: frozenset[int]) -> dict[str, WorkersReading] | None:
    """Freeze every content-importer and read again, until the held read shows nothing that a
    restart would lose (the importers stay frozen: returns that read), or the run must stop
    (thawed, report halted: None). Busy, not an emergency: thaw, wait within what is left of
    `max_wait`, and try again."""
    deadline = time.monotonic() + params.max_wait
    read_at = time.monotonic()
    while True:
        await asyncio.sleep(max(0.0, GRAB_SETTLE_SECONDS - (time.monotonic() - read_at)))
        failed = {h: e for h, e in (await freeze_importers(inventory)).items() if e}
        if failed:
            await _thaw(inventory, report, log, "after a failed freeze")
            why = "; ".join(failed.values())
            log.error("cannot freeze the content-importers (%s); nothing restarted", why)
            report.halt(f"cannot hold the content-importers still ({why}); nothing restarted")
            return None
        readings = await _read_or_halt(inventory, report, log, "held")
        schwartz = None if readings is None else await _read_schwartz(inventory)
        if readings is None or isinstance(schwartz, Exception):
            await _thaw(inventory, report, log, "after a failed read")
            if isinstance(schwartz, Exception):
                report.halt(f"cannot read TheSchwartz while the importers are held ({schwartz}); "
                            f"nothing restarted")
            return None
        gate = report.gate(importers_are_held(readings, approved, grabbed, schwartz[1]))
        for h, r in readings.items():
            report.reading(f"{h} held", workers_figures(r))
        if gate.ok:
            log.info("%s: %s", gate.name, gate.reason)
            return readings
        await _thaw(inventory, report, log, "an import is under way")
        if params.emergency or time.monotonic() >= deadline:
            why = ("it was not in the approved emergency" if params.emergency else
                   f"still so after waiting {params.max_wait} s")
            log.error("not restarting: %s (%s)", gate.reason, why)
            report.halt(f"refused: an import started just before the restart ({gate.reason}; "
                        f"{why}); nothing restarted")
            return None
        log.info("an import started just before the restart (%s): waiting again", gate.reason)
        wait = params.model_copy(update={"max_wait": int(max(0, deadline - time.monotonic()))})
        thawed = await _read_or_halt(inventory, report, log, "after thawing")
        if thawed is None:
            return None
        thawed, idle = await _wait_for_idle(inventory, report, log, wait, thawed)
        if thawed is None:
            return None
        if not idle.ok:
            report.halt(f"refused: content-importers still busy after waiting "
                        f"{params.max_wait} s ({idle.reason}); nothing restarted")
            return None
        read_at = time.monotonic()
        schwartz = await _read_schwartz(inventory)
        if isinstance(schwartz, Exception):
            report.halt(f"cannot read TheSchwartz ({schwartz}); nothing restarted")
            return None
        grabbed = schwartz[1]


async def _thaw(inventory: Inventory, report: Report, log: Any, why: str) -> None:
    """SIGCONT every content-importer; a host where that fails thaws by its dead man's thaw."""
    failed = {h: e for h, e in (await thaw_importers(inventory)).items() if e}
    report.reading(f"importers thawed ({why})",
                   {"failed": failed, "note": "a failed host thaws by itself within 2 minutes"}
                   if failed else {"hosts": "all"})
    if failed:
        log.error("thawing the content-importers failed on %s: %s; they thaw by themselves "
                  "within 2 minutes", ", ".join(failed), "; ".join(failed.values()))


async def _ready_jobs(inventory: Inventory) -> int | Exception:
    """TheSchwartz's ready jobs, all functions together, or the error that stopped the read."""
    try:
        queue = await attempt(lambda: read_schwartz_queue(inventory))
    except (Unavailable, DatabaseRefused) as e:
        return e
    return sum(q.ready for q in queue)


async def _watch_queue(inventory: Inventory, report: Report, log: Any,
                       params: RestartWorkersParams, before: int, db: str) -> None:
    """Sample the ready jobs every `poll_seconds` for `queue_drain_seconds`; judge the trend."""
    started = time.monotonic()
    samples: list[int] = []
    while True:
        ready = await _ready_jobs(inventory)
        if isinstance(ready, Exception):
            report.record(db, QUEUE, Outcome.FAILED, f"cannot read the queue: {ready}", started)
            log.error("cannot read TheSchwartz's queue after the restart: %s", ready)
            report.halt(f"TheSchwartz's queue unreadable after the restart ({ready})")
            return
        samples.append(ready)
        elapsed = time.monotonic() - started
        if elapsed >= params.queue_drain_seconds:
            break
        await asyncio.sleep(min(params.poll_seconds, params.queue_drain_seconds - elapsed))
    report.reading("TheSchwartz after", {"ready_first": samples[0], "ready_last": samples[-1],
                                         "samples": samples})
    gate = report.gate(schwartz_queue_is_draining(before, samples,
                                                  time.monotonic() - started, params.queue_slack))
    if gate.ok:
        log.info("%s: %s", gate.name, gate.reason)
        report.record(db, QUEUE, Outcome.DONE, gate.reason, started)
    else:
        log.error("%s: HOLD: %s", gate.name, gate.reason)
        report.record(db, QUEUE, Outcome.FAILED, gate.reason, started)
        report.halt(f"TheSchwartz's ready queue grew after the restart ({gate.reason})")
