"""restart-webs: restart the webs one at a time, each out of the ALB while it restarts.

The notes (Webs): "There is a handy tool to do the restarts, but this one lets you give it a
'delay'. If you have an emergency, and need to restart everything, you can just run the command
with a 0 argument." dw-ops' script did web01 first (the canary), then every other web:
`bin/bounce-apache`, a pause, then `/admin/healthy` had to say `status=ok`, else it stopped.
Here each web is also taken out of the ALB's target group first, so no user request reaches a
web while it restarts.

1. Load the inventory; check the hosts and the parameters against it.
2. Plan: the canary (the first web) alone, then groups of `max_unavailable`, `delay` s apart.
   Publish the plan; a dry run stops here. `delay=0` is the notes' emergency: every web at once.
3. Emergency only: a human approves what it loses, or nothing happens.
4. Gates: every planned web is registered and healthy in the ALB and says `status=ok`, and
   taking a group out leaves at least `webs - max_unavailable` webs in rotation.
5. For each group (gates re-read before each one), for each of its webs: out of the target
   group; wait until its requests drained (`/admin/inflight` 0, at least `min_drain_seconds`,
   at most `drain_seconds`); `web.restart` over SSH (pid read before and after); wait for
   `status=ok` (at most `healthy_timeout`); back into the target group; wait until the ALB says
   healthy (at most `alb_healthy_timeout`). Then `delay` s.
   The first failure halts the run: the web that failed stays OUT of the target group (an
   operator checks it and registers it again); webs not reached are not touched.
   A web found out of the target group refuses the run (it may have been taken out on purpose),
   unless the run names it in `put_back`: a web left out by a halted or crashed run is then
   restarted first, alone, and put back only once it says `status=ok` (it takes no capacity
   away: it is already out).
6. Read every web's ALB state and `/admin/healthy` again (the "after" gate judges the planned
   webs); publish the report: per web done / failed / not reached, with timings, pids and health
   readings, and which webs are out of the target group.

Steps 3-6 hold the fleet-wide maintenance lock (dwops.maintenance): no other restart of webs,
memcached or workers reads or changes the fleet meanwhile; one that holds it refuses this run.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, TypeVar

from prefect import flow, get_run_logger
from pydantic import Field, model_validator

from dwops.approval import decide_emergency
from dwops.inventory import Inventory, resolve_inventory
from dwops.runbook import (maintenance, HOST_LIST, BadParameters, EmergencyParams, Gate, HostNames, Outcome,
                           Plan, Report, Step, finish, hosts_of, publish_plan)
from tasks.aws import TargetState, deregister_web, read_target_health, read_web_target, register_web
from tasks.common import attempt
from tasks.ssh import ssh_session
from tasks.web import (DEFAULT_HEALTH_PATH, DEFAULT_INFLIGHT_PATH, HealthReading, WebBadReply,
                       WebProcess, read_healthy, read_inflight, read_web_process, restart_web)

T = TypeVar("T")

FLOW = "restart-webs"
ACTION = "restart"
# Target states in which the ALB sends a web no new requests.
OUT_OF_ROTATION = frozenset({"unregistered", "draining", "unused"})


class RestartWebsParams(EmergencyParams):
    """Which webs, how far apart, and how long each wait may last."""

    hosts: HostNames = HOST_LIST
    delay: float = Field(5, ge=0, le=600,
                         description="seconds between one web (or group) back in the ALB and the "
                                     "next one out; 0 is the notes' emergency: every web at once "
                                     "(needs approval)")
    max_unavailable: int = Field(1, ge=1, le=3,
                                 description="webs out of the ALB at once (never more than "
                                             "webs - 1); the canary always goes alone")
    drain_seconds: float = Field(30, ge=1, le=600,
                                 description="longest wait for a web taken out of the ALB to "
                                             "finish its requests in progress")
    min_drain_seconds: float = Field(1.0, ge=0, le=600,
                                     description="shortest wait after taking a web out, so the "
                                                 "ALB stops sending to it (its target refresh; a "
                                                 "real ALB's deregistration delay)")
    healthy_timeout: float = Field(60, ge=1, le=900,
                                   description="longest wait for /admin/healthy to say status=ok "
                                               "after a restart")
    alb_healthy_timeout: float = Field(300, ge=1, le=1800,
                                       description="longest wait for the ALB to call a web put "
                                                   "back healthy")
    put_back: HostNames = Field(default_factory=list, max_length=64,
                                     description="webs left out of the target group by a halted "
                                                 "or crashed run: restarted first, one at a "
                                                 "time, and put back once status=ok")

    @model_validator(mode="after")
    def _emergency_is_delay_zero(self) -> "RestartWebsParams":
        if self.emergency and self.delay != 0:
            raise ValueError("the emergency path restarts every web at once: it takes delay=0")
        if self.min_drain_seconds > self.drain_seconds:
            raise ValueError("min_drain_seconds is more than drain_seconds")
        if self.delay == 0:
            self.emergency = True  # the notes: "restart everything ... with a 0 argument"
        if self.emergency and self.put_back:
            raise ValueError("put_back is for a rolling restart; the emergency path restarts "
                             "every web in place")
        return self

    def check_inventory(self, inventory: Inventory) -> None:
        check_against_inventory(inventory, hosts_of(inventory, "web", self.hosts), self)


@flow(name=FLOW, description="Restart the webs one at a time (each out of the ALB while it "
                             "restarts); delay=0 restarts every web at once after approval.")
async def restart_webs(params: RestartWebsParams = RestartWebsParams()) -> dict[str, Any]:
    log = get_run_logger()
    started_at = round(time.time(), 3)

    # 1. Inventory, hosts, and the parameters the inventory bounds.
    inventory = resolve_inventory(params.inventory)
    params.check_inventory(inventory)
    hosts = hosts_of(inventory, "web", params.hosts)
    target_group = inventory.aws.alb.target_group
    groups = [[h] for h in hosts if h in params.put_back] + groups_of(
        [h for h in hosts if h not in params.put_back], params.max_unavailable)

    # 2. The plan.
    plan = plan_restart_webs(inventory.name, hosts, groups, params, target_group)
    await publish_plan(plan)
    report = Report(FLOW, inventory.name, plan, dry_run=params.dry_run)
    report.reading("parameters", _parameters(params, hosts))
    log.info("plan: %s", " then ".join("+".join(g) for g in groups) if not params.emergency
             else f"EMERGENCY: {', '.join(hosts)} at once")
    if params.dry_run:
        log.info("dry run: the plan is published, nothing is changed")
        return await finish(report, log)

    async with maintenance(report), ssh_session(inventory):
        if params.emergency:
            # 3. Emergency: every web at once, only with a human's approval.
            decision = await decide_emergency(what_is_lost(hosts, target_group), log=log)
            ok, who = decision.approved, decision.reason
            report.gate(Gate("emergency approved", ok, who))
            if not ok:
                log.error("emergency restart not approved (%s): nothing is touched", who)
                report.halt(f"emergency restart not approved ({who})")
            else:
                log.warning("emergency restart of %s at once (%s)", ", ".join(hosts), who)
                await _gate_readings(report, inventory, hosts, "before", as_gate=False)
                cycles = await asyncio.gather(*(_restart_in_place(inventory, h, params, log)
                                                for h in hosts))
                _record(report, cycles, target_group, log)
                failed = [c.host for c in cycles if not c.ok]
                if failed:
                    report.halt(f"emergency restart: {', '.join(failed)} did not come back")
        else:
            # 4. Gates before anything is touched.
            for n, group in enumerate(groups):
                # Webs still to be put back are out on purpose: not judged before their turn.
                later = {h for g in groups[n:] for h in g if h in params.put_back}
                judged = [h for h in (hosts if n == 0 else group) if h not in later]
                gates = await _gates_before(report, inventory, judged, group,
                                            params.max_unavailable)
                held = [g for g in gates if not g.ok]
                for g in gates:
                    (log.info if g.ok else log.error)("gate %s: %s: %s", g.name,
                                                      "pass" if g.ok else "HOLD", g.reason)
                if held:
                    report.halt(f"gate before {', '.join(group)}: "
                                + "; ".join(f"{g.name}: {g.reason}" for g in held)
                                + put_back_hint(gates))
                    break

                # 5. One group: out, drain, restart, status=ok, back in, healthy in the ALB.
                log.info("restarting %s (%s of %s)", ", ".join(group), n + 1, len(groups))
                cycles = await asyncio.gather(*(_restart_out_of_alb(inventory, h, params, log)
                                                for h in group))
                _record(report, cycles, target_group, log)
                failed = [c for c in cycles if not c.ok]
                if failed:
                    report.halt("; ".join(f"{c.host} failed at {c.phase} ({c.error})"
                                          + (f", left OUT of target group {target_group}"
                                             if c.in_target_group is False else "")
                                          for c in failed))
                    break
                if n < len(groups) - 1 and params.delay:
                    log.info("waiting %g s before the next web (delay)", params.delay)
                    await asyncio.sleep(params.delay)

        # 6. After, still under the lock: the planned webs judged, every web read; the report.
        after = await _gate_readings(report, inventory, hosts, "after")
        if not after.ok and not report.halted:
            report.halt(f"after the restarts: {after.reason}")
        report.reading("outcome", _outcome(report, after))
        # When the run began and when its last reading was taken (benchmarks/roll.py: everything
        # between them that is neither a host's restart, its health wait nor a requested wait).
        report.reading("run", {"started_at": started_at, "finished_at": round(time.time(), 3)})
        return await finish(report, log)


# -- parameters and plan (pure) ---------------------------------------------------------------------


def check_against_inventory(inventory: Inventory, hosts: list[str],
                            params: RestartWebsParams) -> None:
    """Refuse what the inventory makes impossible, before any host is touched."""
    webs = inventory.hosts_for("web")
    if not params.emergency and params.max_unavailable > len(webs) - 1:
        raise BadParameters(f"max_unavailable={params.max_unavailable}: inventory "
                            f"{inventory.name!r} has {len(webs)} webs, at most {len(webs) - 1} "
                            f"may be out at once", "max_unavailable")
    missing = [h for h in hosts if h not in inventory.aws.alb.targets]
    if missing:
        raise BadParameters(f"{', '.join(missing)}: no target in the ALB's target group "
                            f"(inventory aws.alb.targets)", "hosts")
    unplanned = [h for h in params.put_back if h not in hosts]
    if unplanned:
        raise BadParameters(f"{', '.join(unplanned)} not among the webs this run restarts "
                            f"({', '.join(hosts)})", "put_back")


def groups_of(hosts: list[str], max_unavailable: int) -> list[list[str]]:
    """The canary (the first web) alone, then the rest in inventory order, `max_unavailable` at
    a time."""
    if not hosts:
        return []
    rest = hosts[1:]
    return [hosts[:1]] + [rest[i:i + max_unavailable] for i in range(0, len(rest), max_unavailable)]


def plan_restart_webs(inventory: str, hosts: list[str], groups: list[list[str]],
                      params: RestartWebsParams, target_group: str) -> Plan:
    """The steps, in order, and the gates that guard them."""
    if params.emergency:
        steps = [Step(h, ACTION, "EMERGENCY: restarted at the same time as every other planned "
                                 "web, without leaving the ALB; then status=ok") for h in hosts]
        return Plan(FLOW, inventory, steps, gates=["a human approves the emergency restart"],
                    notes=[what_is_lost(hosts, target_group),
                           f"each web must say status=ok within {params.healthy_timeout:g} s"])
    steps = []
    first = next((n for n, g in enumerate(groups) if g[0] not in params.put_back), None)
    for n, group in enumerate(groups):
        role = ("put back (left out by an earlier run)" if group[0] in params.put_back else
                "canary" if n == first else f"group {n + 1} of {len(groups)}")
        together = [h for h in group if len(group) > 1]
        for h in group:
            with_ = f" (with {', '.join(x for x in together if x != h)})" if together else ""
            steps.append(Step(h, ACTION, f"{role}{with_}: out of {target_group}, drain, "
                                         f"web.restart, status=ok, back in, healthy in the ALB"))
    return Plan(FLOW, inventory, steps,
                gates=[f"every planned web is registered and healthy in {target_group}",
                       "every planned web's /admin/healthy says status=ok",
                       f"taking a group out leaves at least webs - {params.max_unavailable} webs "
                       f"in rotation (re-read before every group)"],
                notes=[f"{params.delay:g} s between groups; drain at least "
                       f"{params.min_drain_seconds:g} s, at most {params.drain_seconds:g} s; "
                       f"status=ok within {params.healthy_timeout:g} s",
                       f"a failure halts the run: the web that failed stays OUT of {target_group}; "
                       f"webs not reached are not touched"])


def what_is_lost(hosts: list[str], target_group: str) -> str:
    """What the emergency path costs, for the approval form and the plan."""
    return (f"Every web ({', '.join(hosts)}) restarts at once, without leaving {target_group}: "
            f"until they answer again users will see errors on every page those webs serve, "
            f"and requests in progress are cut off.")


def _parameters(params: RestartWebsParams, hosts: list[str]) -> dict[str, Any]:
    return {"hosts": hosts, "delay": params.delay, "max_unavailable": params.max_unavailable,
            "drain_seconds": params.drain_seconds, "min_drain_seconds": params.min_drain_seconds,
            "healthy_timeout": params.healthy_timeout,
            "alb_healthy_timeout": params.alb_healthy_timeout, "emergency": params.emergency,
            "put_back": params.put_back, "reason": params.reason}


# -- guards (pure) ------------------------------------------------------------------------------


def webs_in_rotation(states: list[TargetState] | Exception, hosts: list[str]) -> Gate:
    """Every web of `hosts` is registered and healthy in the target group."""
    if isinstance(states, Exception):
        return Gate("webs healthy in the ALB", False, f"cannot read the target group: {states}")
    by_host = {s.host: s for s in states}
    bad = [f"{h} {by_host[h].state if h in by_host else 'unknown'}" for h in hosts
           if h not in by_host or by_host[h].state != "healthy"]
    return Gate("webs healthy in the ALB", not bad,
                "not in rotation: " + ", ".join(bad) if bad else
                f"{', '.join(hosts)} registered and healthy",
                {s.host: s.state for s in states})


def put_back_hint(gates: list[Gate]) -> str:
    """What to do about webs a gate found out of the target group."""
    rotation = next((g for g in gates if g.name.startswith("webs healthy in the ALB")), None)
    if rotation is None or rotation.ok or not isinstance(rotation.readings, dict):
        return ""
    out = [h for h, state in rotation.readings.items()
           if state in OUT_OF_ROTATION and h in rotation.reason]
    if not out:
        return ""
    return (f" (out of the target group: {', '.join(sorted(out))}; if a halted or crashed run "
            f"left it out, check it, then run again with put_back={sorted(out)})")


def webs_say_ok(readings: dict[str, HealthReading | Exception]) -> Gate:
    """Every web's /admin/healthy says status=ok."""
    bad = []
    for h, r in readings.items():
        if isinstance(r, Exception):
            bad.append(f"{h}: {getattr(r, 'reason', r)}")
        elif not r.healthy.ok:
            bad.append(f"{h}: status=fail ({', '.join(r.healthy.failures)})")
    return Gate("webs say status=ok", not bad,
                "; ".join(bad) if bad else f"{', '.join(readings)}: status=ok",
                {h: _health_figures(r) for h, r in readings.items()})


def capacity_allows(states: list[TargetState] | Exception, group: list[str],
                    max_unavailable: int) -> Gate:
    """Taking `group` out leaves at least (webs - max_unavailable) webs in rotation; a group
    already out of rotation (webs being put back) takes nothing away."""
    if isinstance(states, Exception):
        return Gate("capacity", False, f"cannot read the target group: {states}")
    total = len(states)
    healthy = {s.host for s in states if s.state == "healthy"}
    left = len(healthy - set(group))
    need = total - max_unavailable
    reason = (f"{len(healthy)} of {total} webs in rotation; without {', '.join(group)} "
              f"{left} stay (at least {need} must: max_unavailable={max_unavailable})")
    if not healthy & set(group):
        return Gate("capacity", True, f"{', '.join(group)} already out of rotation: restarting "
                                      f"it takes nothing away ({len(healthy)} of {total} in)",
                    {"webs": total, "in_rotation": len(healthy), "would_stay": left,
                     "need": need})
    return Gate("capacity", left >= need, reason,
                {"webs": total, "in_rotation": len(healthy), "would_stay": left, "need": need})


def drained(state: TargetState | Exception, inflight: int | Exception, elapsed: float,
            min_seconds: float) -> bool:
    """The ALB sends the web nothing new, and what it had is answered: `/admin/inflight` is 0,
    or (a web that cannot count) the ALB finished draining it; and `min_seconds` have passed."""
    if elapsed < min_seconds or isinstance(state, Exception) or state.state not in OUT_OF_ROTATION:
        return False
    if isinstance(inflight, int):
        return inflight == 0
    cannot_count = isinstance(inflight, WebBadReply) and inflight.status_code == 404
    return cannot_count and state.state == "unregistered"


def _health_figures(r: HealthReading | Exception) -> dict[str, Any]:
    if isinstance(r, Exception):
        return {"reachable": False, "error": str(getattr(r, "reason", r))}
    return {"ok": r.healthy.ok, "failures": list(r.healthy.failures), "okay": len(r.healthy.okay),
            "seconds": round(r.seconds, 3)}


# -- one web --------------------------------------------------------------------------------------


@dataclass
class Cycle:
    """What happened to one web: where it got to, its timings and readings, and whether it is in
    the target group now."""

    host: str
    started: float = field(default_factory=time.monotonic)
    ok: bool = False
    phase: str = ""
    error: str = ""
    in_target_group: bool | None = True
    figures: dict[str, Any] = field(default_factory=dict)

    def mark(self, what: str) -> None:
        self.figures[what] = round(time.time(), 3)

    def fail(self, phase: str, error: str) -> "Cycle":
        self.phase, self.error = phase, error
        return self

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


async def _restart_out_of_alb(inventory: Inventory, host: str, params: RestartWebsParams,
                              log: Any) -> Cycle:
    """Out of the target group, drained, restarted, status=ok, back in, healthy in the ALB.
    Stops at the first failure, leaving the web out of the target group."""
    c = Cycle(host)
    c.mark("started_at")
    address, port, health_path = _web_address(inventory, host)

    current = await _try(lambda: read_web_target(inventory, host))
    if not isinstance(current, Exception) and current.state == "unregistered":
        log.info("%s: already out of the target group (left out by an earlier run)", host)
    else:
        log.info("%s: taking it out of the target group", host)
        try:
            await deregister_web(inventory, host)
        except Exception as e:  # noqa: BLE001 - recorded; the target's state is re-read below
            await _note_target(c, inventory)
            return c.fail("out of the target group", f"deregister failed: {e}")
    c.mark("deregistered_at")
    c.in_target_group = False

    # Its process is read over SSH while it drains: the first time this run reaches its shell.
    process = asyncio.create_task(_try(lambda: attempt(lambda: read_web_process(inventory, host))))
    ok, state, inflight = await _drain(inventory, host, address, port, params)
    before = await process
    c.figures.update(alb_state_out=_state(state), inflight=_value(inflight))
    if not ok:
        return c.fail("drain", f"not drained within {params.drain_seconds:g} s "
                               f"(ALB {_state(state)}, in flight {_value(inflight)})")
    c.mark("drained_at")
    log.info("%s: out of rotation (ALB %s), %s requests in flight", host, _state(state),
             _value(inflight))

    failed = await _restart_and_verify(c, inventory, host, before, params, log)
    if failed:
        return c

    log.info("%s: status=ok; putting it back into the target group", host)
    try:
        await register_web(inventory, host)
    except Exception as e:  # noqa: BLE001 - recorded; the target's state is re-read below
        await _note_target(c, inventory)
        return c.fail("back into the target group", f"register failed: {e}")
    c.mark("registered_at")
    c.in_target_group = True
    ok, state = await _poll(lambda: read_web_target(inventory, host),
                            lambda s: s.state == "healthy", params.alb_healthy_timeout, 0.5)
    c.figures["alb_state"] = _state(state)
    if not ok:
        log.error("%s: not healthy in the ALB (%s): taking it out again", host, _state(state))
        again = ""
        try:
            await deregister_web(inventory, host)
            c.in_target_group = False
        except Exception as e:  # noqa: BLE001 - recorded: it stays in, unhealthy
            again = f" (taking it out again failed: {e})"
        return c.fail("healthy in the ALB", f"the ALB says {_state(state)} after "
                                            f"{params.alb_healthy_timeout:g} s{again}")
    c.mark("alb_healthy_at")
    c.ok = True
    return c


async def _restart_in_place(inventory: Inventory, host: str, params: RestartWebsParams,
                            log: Any) -> Cycle:
    """The emergency path for one web: restarted where it is (still in the target group), then
    status=ok and healthy in the ALB."""
    c = Cycle(host)
    c.mark("started_at")
    before = await _try(lambda: attempt(lambda: read_web_process(inventory, host)))
    if await _restart_and_verify(c, inventory, host, before, params, log):
        await _note_target(c, inventory)
        return c
    ok, state = await _poll(lambda: read_web_target(inventory, host),
                            lambda s: s.state == "healthy", params.alb_healthy_timeout, 0.5)
    c.figures["alb_state"] = _state(state)
    c.in_target_group = not isinstance(state, Exception) and state.state not in OUT_OF_ROTATION
    if not ok:
        return c.fail("healthy in the ALB", f"the ALB says {_state(state)}")
    c.mark("alb_healthy_at")
    c.ok = True
    return c


async def _restart_and_verify(c: Cycle, inventory: Inventory, host: str,
                              before: WebProcess | Exception, params: RestartWebsParams,
                              log: Any) -> bool:
    """`web.restart` (only if its process could be read over SSH first), a new pid, then
    status=ok. True when it failed (recorded in `c`)."""
    if isinstance(before, Exception):
        c.fail("ssh", f"cannot reach it over SSH, restart not run: {before}")
        return True
    c.figures["pid_before"] = before.pid
    address, port, health_path = _web_address(inventory, host)

    log.warning("%s: restarting (web.restart), pid %s", host, before.pid)
    c.mark("restart_started_at")
    try:
        result = await restart_web(inventory, host)
    except Exception as e:  # noqa: BLE001 - never retried: recorded, the run halts
        c.mark("restart_finished_at")
        c.fail("restart", f"web.restart over SSH: {e}")
        return True
    c.mark("restart_finished_at")
    c.figures["exit_status"] = result.exit_status
    if result.exit_status != 0:
        c.fail("restart", f"web.restart exited {result.exit_status}: "
                          f"{(result.stderr or result.stdout).strip()[-300:]}")
        return True

    after = await _try(lambda: attempt(lambda: read_web_process(inventory, host)))
    c.mark("pid_checked_at")
    c.figures["pid_after"] = after.pid if isinstance(after, WebProcess) else None
    if isinstance(after, WebProcess) and not after.running:
        c.fail("restart", f"its init script says it is not running after web.restart: "
                          f"{after.text}")
        return True
    if isinstance(after, WebProcess) and after.pid is not None and after.pid == before.pid:
        c.fail("restart", f"still pid {before.pid}: web.restart did not restart it")
        return True
    if not isinstance(after, WebProcess):
        log.warning("%s: pid after the restart unknown (%s); judged by /admin/healthy", host,
                    after)

    ok, reading = await _poll(lambda: read_healthy(address, port, health_path),
                              lambda r: r.healthy.ok, params.healthy_timeout, 0.25)
    c.figures["health"] = _health_figures(reading)
    if not ok:
        c.fail("status=ok", f"/admin/healthy not status=ok within {params.healthy_timeout:g} s: "
                            + _health_text(reading))
        return True
    c.mark("status_ok_at")
    return False


async def _drain(inventory: Inventory, host: str, address: str, port: int,
                 params: RestartWebsParams
                 ) -> tuple[bool, TargetState | Exception, int | Exception]:
    """Wait until `drained` (at most drain_seconds): (drained, last target state, last count)."""
    started = time.monotonic()
    while True:
        state, inflight = await asyncio.gather(
            _try(lambda: read_web_target(inventory, host)),
            _try(lambda: read_inflight(address, port, DEFAULT_INFLIGHT_PATH)))
        if drained(state, inflight, time.monotonic() - started, params.min_drain_seconds):
            return True, state, inflight
        if time.monotonic() - started > params.drain_seconds:
            return False, state, inflight
        await asyncio.sleep(0.1)


# -- readings -----------------------------------------------------------------------------------


async def _gates_before(report: Report, inventory: Inventory, hosts: list[str], group: list[str],
                        max_unavailable: int) -> list[Gate]:
    states, health = await asyncio.gather(
        _try(lambda: read_target_health(inventory)), _read_health(inventory, hosts))
    gates = [webs_in_rotation(states, hosts), webs_say_ok(health),
             capacity_allows(states, group, max_unavailable)]
    return [report.gate(replace(g, name=f"{g.name} (before {'+'.join(group)})")) for g in gates]


async def _gate_readings(report: Report, inventory: Inventory, hosts: list[str],
                         when: str, as_gate: bool = True) -> Gate:
    """Every web's ALB state and /admin/healthy, read; the planned `hosts` judged. Recorded as a
    gate named for `when` (or, for the emergency path, which restarts sick webs too, as a
    reading that holds nothing)."""
    webs = inventory.hosts_for("web")
    states, health = await asyncio.gather(
        _try(lambda: read_target_health(inventory)), _read_health(inventory, webs))
    rotation, ok = webs_in_rotation(states, hosts), webs_say_ok({h: health[h] for h in hosts})
    gate = Gate(f"{when}: planned webs in rotation and status=ok", rotation.ok and ok.ok,
                f"{rotation.reason}; {ok.reason}",
                {"alb": rotation.readings,
                 "healthy": {h: _health_figures(r) for h, r in health.items()}})
    if as_gate:
        report.gate(gate)
    else:
        report.reading(gate.name, {"ok": gate.ok, "reason": gate.reason, **gate.readings})
    get_run_logger().info("%s: %s", gate.name, gate.reason)
    return gate


async def _read_health(inventory: Inventory, hosts: list[str]
                       ) -> dict[str, HealthReading | Exception]:
    async def one(h: str) -> HealthReading | Exception:
        address, port, path = _web_address(inventory, h)
        return await _try(lambda: attempt(lambda: read_healthy(address, port, path)))

    return dict(zip(hosts, await asyncio.gather(*(one(h) for h in hosts))))


async def _note_target(c: Cycle, inventory: Inventory) -> None:
    state = await _try(lambda: read_web_target(inventory, c.host))
    c.figures["alb_state"] = _state(state)
    c.in_target_group = None if isinstance(state, Exception) else state.state not in OUT_OF_ROTATION


async def _try(read: Callable[[], Awaitable[T]]) -> T | Exception:
    """The read's value, or the error it raised as a value (for judging, never hidden)."""
    try:
        return await read()
    except Exception as e:  # noqa: BLE001 - Unavailable, a bad reply, a misconfiguration
        return e


async def _poll(read: Callable[[], Awaitable[T]], good: Callable[[T], bool], timeout: float,
                interval: float) -> tuple[bool, T | Exception]:
    """Read until `good` (True, the reading) or until `timeout` s passed (False, the last one)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await _try(read)
        if not isinstance(value, Exception) and good(value):
            return True, value
        if time.monotonic() >= deadline:
            return False, value
        await asyncio.sleep(interval)


def _web_address(inventory: Inventory, host: str) -> tuple[str, int, str]:
    service = inventory.service("web")
    return (inventory.host(host).address, service.port or 80,
            service.health_path or DEFAULT_HEALTH_PATH)


def _state(s: TargetState | Exception | None) -> str:
    if s is None:
        return "unknown"
    if isinstance(s, Exception):
        return f"unknown ({s})"
    return s.state + (f" ({s.reason})" if s.reason and s.state != "unregistered" else "")


def _value(v: Any) -> Any:
    return f"unknown ({v})" if isinstance(v, Exception) else v


def _health_text(r: HealthReading | Exception) -> str:
    if isinstance(r, Exception):
        return str(getattr(r, "reason", r))
    return "status=ok" if r.healthy.ok else "status=fail: " + ", ".join(r.healthy.failures)


# -- the report -----------------------------------------------------------------------------------


def _record(report: Report, cycles: list[Cycle], target_group: str, log: Any) -> None:
    for c in cycles:
        f = c.figures
        out = (f"out of {target_group} at {_clock(f['deregistered_at'])}, drained in "
               f"{_span(f, 'deregistered_at', 'drained_at')} s ({f.get('inflight')} in flight); "
               if "drained_at" in f else "")
        if c.ok:
            back = (f"; back in {target_group} and healthy at {_clock(f['alb_healthy_at'])}"
                    + (f", {_span(f, 'deregistered_at', 'alb_healthy_at')} s out of rotation"
                       if "deregistered_at" in f else ""))
            detail = (f"restarted: pid {f.get('pid_before')} -> {f.get('pid_after')}; {out}"
                      f"web.restart at {_clock(f['restart_started_at'])} took "
                      f"{_span(f, 'restart_started_at', 'restart_finished_at')} s, status=ok "
                      f"{_span(f, 'restart_finished_at', 'status_ok_at')} s later{back}")
            log.info("%s: %s", c.host, detail)
        else:
            where = {True: f"still IN target group {target_group}",
                     False: f"left OUT of target group {target_group}"
                            + (f" since {_clock(f['deregistered_at'])}" if "deregistered_at" in f
                               else "") + ": check it, then register it again",
                     None: f"in or out of {target_group}: unknown"}[c.in_target_group]
            detail = f"FAILED at {c.phase}: {c.error}; {out}{where}"
            log.error("%s: %s", c.host, detail)
        report.record(c.host, ACTION, Outcome.DONE if c.ok else Outcome.FAILED, detail,
                      started=time.monotonic() - c.seconds)
        report.reading(f"{c.host}: restart", {**f, "in_target_group": c.in_target_group,
                                              "seconds": round(c.seconds, 2)})


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t * 10) % 10}"


def _span(f: dict[str, Any], start: str, end: str) -> float | None:
    return round(f[end] - f[start], 2) if start in f and end in f else None


def _outcome(report: Report, after: Gate) -> dict[str, Any]:
    by = {o: [r.host for r in report.results if r.outcome is o] for o in Outcome}
    alb = after.readings.get("alb") or {}
    return {"done": by[Outcome.DONE], "failed": by[Outcome.FAILED],
            "not_reached": by[Outcome.NOT_REACHED],
            "out_of_target_group": sorted(h for h, s in alb.items() if s != "healthy")}
