"""restart-memcache: restart the memcached nodes one at a time, only while the databases can take
the misses, and stop as soon as they cannot.

The notes (Memcache): "KEEP IN MIND: Restarting memcache puts a heavy strain on the databases.
[...] at some point in the future restarting memcache will become synonymous with shooting the
site in the knee and watching it hobble along." A restarted node comes back empty: every page it
held is read from the database again until it is warm. So:

1. Load the inventory and check the requested hosts (default: every memcached node, in inventory
   order), that each allows `memcached.restart`, and the parameters (each ceiling at or above
   its threshold).
2. Plan: for each node, restart it, then wait for it to recover. Publish the plan; a dry run
   stops here.
3. Read every node's `stats` ("before").
4. For each node, in order, one at a time:
   a. Gates: `db_load_is_low`: the database's threads running, queries/s (SQL, over
      sample_seconds) and CPU (CloudWatch) all under their thresholds. While the load is high,
      poll every sample_seconds for up to wait_for_load seconds; still high: refuse (halt: this
      node and the ones after it are untouched). Then `other_nodes_are_up`: every other node
      answers `stats` (never two nodes down at once).
   b. Restart it (`memcached.restart` over SSH) and verify it answers `stats` as a new process
      (new pid, uptime reset) within verify_seconds; otherwise halt.
   c. Watch every sample_seconds: the database's load and the node's hit ratio over the window.
      Load over any ceiling (`db_load_is_under_ceiling`): STOP (halt; the next node is not
      touched). Go on to the next node only when `node_has_recovered`: its hit ratio is back to
      target_hit_ratio, or the database's load is back under the thresholds. Neither within
      recovery_timeout: halt.
5. Read every node and the database again ("after") and publish the report: per node timings,
   every gate with its readings, and the load and hit ratio over the run as a time series.

Steps 3-5 hold the fleet-wide maintenance lock (dwops.maintenance): no other restart of webs,
memcached or workers reads or changes the fleet meanwhile; one that holds it refuses this run.

A reading that cannot be taken (database or CloudWatch unreachable, no recent CPU data) counts
as high: every gate fails closed.

Emergency path (not part of this flow): the notes' own tool, `bin/restart-memcache` on
dfw-admin01 (the inventory command `restart_memcache`), restarts every node at once. It stays
there for an operator who needs the whole cache emptied now and accepts the database load; this
flow never runs it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger
from pydantic import Field, model_validator

from dwops.errors import Unavailable
from dwops.inventory import Inventory, resolve_inventory
from dwops.runbook import (maintenance, HOST_LIST, BadParameters, ChangeParams, Gate, HostNames, Outcome,
                           Plan, Report, Step, finish, hosts_of, publish_plan)
from tasks.aws import AwsError, MetricPoint, read_aurora_metrics
from tasks.common import attempt
from tasks.database import DatabaseRefused, DbLoad, read_db_load
from tasks.memcache import (MemcacheStats, hit_ratio_between, read_memcached_node,
                            read_memcached_nodes, restart_memcached, restarted_between)
from tasks.ssh import SshError, ssh_session

FLOW = "restart-memcache"
RESTART, RECOVER = "restart", "wait for recovery"

# CloudWatch: Aurora's CPUUtilization is a 1-minute metric; a point older than this is no reading.
CPU_PERIOD = 60
CPU_WINDOW = 300
CPU_MAX_AGE = 300.0


class RestartMemcacheParams(ChangeParams):
    hosts: HostNames = HOST_LIST
    # thresholds: the database must be under every one of them before a node is restarted
    max_threads_running: int = Field(10, ge=1, le=10_000, description=(
        "start a node's restart only while the database has fewer threads running than this"))
    max_cpu: float = Field(60, gt=0, le=100, description=(
        "... and its CPU (CloudWatch CPUUtilization of the cluster, %) is under this"))
    max_qps: float = Field(200, gt=0, le=1_000_000, description=(
        "... and its queries per second (over sample_seconds) are under this"))
    # ceilings: crossing any of them after a restart stops the run
    ceiling_threads_running: int = Field(40, ge=1, le=10_000, description=(
        "stop the run if the database's threads running go over this after a restart"))
    ceiling_cpu: float = Field(85, gt=0, le=100, description=(
        "stop the run if the database's CPU % goes over this after a restart"))
    ceiling_qps: float = Field(1000, gt=0, le=1_000_000, description=(
        "stop the run if the database's queries per second go over this after a restart"))
    # recovery
    target_hit_ratio: float = Field(0.8, ge=0, le=1, description=(
        "a restarted node has recovered when its hit ratio over a sample is at least this "
        "(or the database's load is back under the thresholds)"))
    recovery_timeout: float = Field(300, ge=1, le=3600, description=(
        "seconds a restarted node has to recover before the run halts"))
    sample_seconds: float = Field(2, ge=0.5, le=60, description=(
        "length of each load and hit-ratio sample (and the pause between polls)"))
    wait_for_load: float = Field(60, ge=0, le=3600, description=(
        "seconds to wait for a loaded database to calm down before refusing a node"))
    verify_seconds: float = Field(30, ge=1, le=300, description=(
        "seconds a restarted node has to answer `stats` as a new process"))

    @model_validator(mode="after")
    def _ceilings_above_thresholds(self) -> "RestartMemcacheParams":
        bad = [f"{c} ({getattr(self, c):g}) is below {t} ({getattr(self, t):g})"
               for c, t in (("ceiling_threads_running", "max_threads_running"),
                            ("ceiling_cpu", "max_cpu"), ("ceiling_qps", "max_qps"))
               if getattr(self, c) < getattr(self, t)]
        if bad:
            raise ValueError("a ceiling must be at or above its threshold: " + "; ".join(bad))
        return self

    def check_inventory(self, inventory: Inventory) -> None:
        for h in hosts_of(inventory, "memcached", self.hosts):
            try:
                inventory.command(h, "memcached.restart")
            except KeyError as e:
                raise BadParameters(e.args[0], "inventory") from None


@flow(name=FLOW, description="Restart memcached nodes one at a time while the database can take "
                             "it; stop if its load crosses a ceiling.")
async def restart_memcache(params: RestartMemcacheParams = RestartMemcacheParams()
                           ) -> dict[str, Any]:
    log = get_run_logger()

    # 1. Inventory and hosts.
    inventory = resolve_inventory(params.inventory)
    params.check_inventory(inventory)
    hosts = hosts_of(inventory, "memcached", params.hosts)
    every_node = inventory.hosts_for("memcached")

    # 2. The plan.
    plan = plan_restarts(inventory.name, hosts, params)
    await publish_plan(plan)
    report = Report(FLOW, inventory.name, plan, dry_run=params.dry_run)
    if params.dry_run:
        log.info("dry run: %d nodes planned, nothing restarted", len(hosts))
        return await finish(report, log)
    run = _Run(inventory, params, report, log)

    async with maintenance(report), ssh_session(inventory):
        # 3. Every node before.
        await run.read_nodes(every_node, "before")

        # 4. One node at a time.
        for i, host in enumerate(hosts):
            rest = hosts[i + 1:]
            untouched = f"{', '.join(rest)} not touched" if rest else "no node after it"

            # a. Gates: the database is not busy (waiting a while if it is), and every other
            #    node answers.
            waited = time.monotonic()
            gate = report.gate(await run.wait_for_low_load(host))
            if not gate.ok:
                log.error("%s: refused after waiting %.0f s: %s", host,
                          time.monotonic() - waited, gate.reason)
                report.record(host, RESTART, Outcome.SKIPPED, f"refused: {gate.reason}")
                report.halt(f"database too busy to restart {host} ({gate.reason}); {untouched}")
                break
            log.info("%s: %s", host, gate.reason)
            nodes = await read_memcached_nodes(inventory, every_node)
            gate = report.gate(other_nodes_are_up(host, nodes))
            if not gate.ok:
                log.error("%s: refused: %s", host, gate.reason)
                report.record(host, RESTART, Outcome.SKIPPED, f"refused: {gate.reason}")
                report.halt(f"{host} not restarted: {gate.reason}; {untouched}")
                break
            log.info("%s: %s", host, gate.reason)

            # b. Restart and verify.
            restarted = await run.restart_and_verify(host, nodes[host])
            if restarted is None:
                report.halt(f"memcached on {host} did not come back as a new process; {untouched}")
                break

            # c. Watch the database and the node until it has recovered (or stop).
            if not await run.watch_recovery(restarted, untouched):
                break

        # 5. Every node and the database after, and the report, still under the lock.
        await run.read_nodes(every_node, "after")
        await run.read_load("database after")
        return await finish(report, log)


def plan_restarts(inventory: str, hosts: list[str], p: RestartMemcacheParams) -> Plan:
    """The plan: for each node in order, restart then wait for recovery. Pure."""
    steps = []
    for h in hosts:
        steps.append(Step(h, RESTART, "gates, then memcached.restart; verify `stats`: new pid, "
                                      "uptime reset"))
        steps.append(Step(h, RECOVER, f"every {p.sample_seconds:g} s: stop over a ceiling; go on "
                                      f"at hit ratio >= {p.target_hit_ratio:g} or load under the "
                                      f"thresholds (at most {p.recovery_timeout:g} s)"))
    return Plan(FLOW, inventory, steps, gates=[
        "other_nodes_are_up: every other memcached node answers `stats` (one node down at a time)",
        f"db_load_is_low: threads running < {p.max_threads_running}, queries/s < {p.max_qps:g}, "
        f"CPU < {p.max_cpu:g} % (waits up to {p.wait_for_load:g} s, then refuses)",
        f"db_load_is_under_ceiling after each restart: threads running <= "
        f"{p.ceiling_threads_running}, queries/s <= {p.ceiling_qps:g}, CPU <= {p.ceiling_cpu:g} % "
        "(else STOP)",
        f"node_has_recovered before the next node: hit ratio >= {p.target_hit_ratio:g} or load "
        "under the thresholds",
    ], notes=["one node at a time; a restarted node comes back empty and its reads go to the "
              "database",
              "emergency path, not used here: bin/restart-memcache on dfw-admin01 (inventory "
              "command restart_memcache) restarts every node at once"])


# -- guards (pure) ---------------------------------------------------------------------------------


def load_figures(load: DbLoad | Exception, cpu: MetricPoint | None | Exception) -> dict[str, Any]:
    """The database's load as report figures (None where there is no reading)."""
    out: dict[str, Any] = {"threads_running": None, "threads_connected": None, "qps": None,
                           "cpu": None, "cpu_age_seconds": None}
    if isinstance(load, DbLoad):
        out.update(threads_running=load.threads_running, threads_connected=load.threads_connected,
                   qps=None if load.queries_per_second is None
                   else round(load.queries_per_second, 1))
    else:
        out["db_error"] = str(load)
    if isinstance(cpu, MetricPoint):
        out.update(cpu=round(cpu.value, 1), cpu_age_seconds=round(cpu.age_seconds))
    elif isinstance(cpu, Exception):
        out["cpu_error"] = str(cpu)
    return out


def _load_problems(load: DbLoad | Exception, cpu: MetricPoint | None | Exception,
                   threads: float, qps: float, cpu_limit: float, *, ceiling: bool) -> list[str]:
    """What is too high (or unknown) against the limits: `ceiling` means over the limit counts,
    otherwise at or over it (a threshold is to be under). A missing reading is a problem."""
    too_high = (lambda v, lim: v > lim) if ceiling else (lambda v, lim: v >= lim)
    word = ">" if ceiling else ">="
    problems = []
    if isinstance(load, Exception):
        problems.append(f"cannot read the database's load ({load})")
    else:
        if too_high(load.threads_running, threads):
            problems.append(f"{load.threads_running} threads running {word} {threads:g}")
        if load.queries_per_second is None:
            problems.append("no queries/s (the database restarted during the sample)")
        elif too_high(load.queries_per_second, qps):
            problems.append(f"{load.queries_per_second:.1f} queries/s {word} {qps:g}")
    if isinstance(cpu, Exception):
        problems.append(f"cannot read CPU from CloudWatch ({cpu})")
    elif cpu is None:
        problems.append("no CPU data in CloudWatch")
    elif cpu.age_seconds > CPU_MAX_AGE:
        problems.append(f"CPU data is {cpu.age_seconds:.0f} s old (max {CPU_MAX_AGE:g} s)")
    elif too_high(cpu.value, cpu_limit):
        problems.append(f"CPU {cpu.value:.1f} % {word} {cpu_limit:g} %")
    return problems


def _load_text(load: DbLoad | Exception, cpu: MetricPoint | None | Exception) -> str:
    f = load_figures(load, cpu)
    return (f"{f['threads_running']} threads running, {f['qps']} queries/s, "
            f"CPU {f['cpu']} %")


def db_load_is_low(load: DbLoad | Exception, cpu: MetricPoint | None | Exception,
                   params: RestartMemcacheParams) -> Gate:
    """May a node be restarted now? Only while the database's threads running, queries/s and
    CPU are all under the thresholds; a missing reading fails the gate."""
    problems = _load_problems(load, cpu, params.max_threads_running, params.max_qps,
                              params.max_cpu, ceiling=False)
    reason = ("database load high: " + "; ".join(problems) if problems else
              f"database load low: {_load_text(load, cpu)} (under {params.max_threads_running}, "
              f"{params.max_qps:g}, {params.max_cpu:g} %)")
    return Gate("db_load_is_low", not problems, reason, load_figures(load, cpu))


def db_load_is_under_ceiling(load: DbLoad | Exception, cpu: MetricPoint | None | Exception,
                             params: RestartMemcacheParams) -> Gate:
    """After a restart: is the database's load still at or under every ceiling? A missing
    reading fails (the run cannot tell, so it stops)."""
    problems = _load_problems(load, cpu, params.ceiling_threads_running, params.ceiling_qps,
                              params.ceiling_cpu, ceiling=True)
    reason = ("database load over the ceiling: " + "; ".join(problems) if problems else
              f"under the ceilings: {_load_text(load, cpu)}")
    return Gate("db_load_is_under_ceiling", not problems, reason, load_figures(load, cpu))


def node_has_recovered(host: str, before: MemcacheStats, after: MemcacheStats,
                       load: DbLoad | Exception, cpu: MetricPoint | None | Exception,
                       params: RestartMemcacheParams) -> Gate:
    """May the next node be restarted? When this one's hit ratio over the sample (two `stats`
    samples) is back to the target, or the database's load is back under the thresholds."""
    ratio = hit_ratio_between(before, after)
    gets = None if restarted_between(before, after) else after.cmd_get - before.cmd_get
    figures = {"hit_ratio": None if ratio is None else round(ratio, 3), "gets": gets,
               "uptime": after.uptime, **load_figures(load, cpu)}
    hit = "no gets" if ratio is None else f"hit ratio {ratio:.0%}"
    if ratio is not None and ratio >= params.target_hit_ratio:
        return Gate("node_has_recovered", True,
                    f"{host}: {hit} (target {params.target_hit_ratio:.0%})", figures)
    problems = _load_problems(load, cpu, params.max_threads_running, params.max_qps,
                              params.max_cpu, ceiling=False)
    if not problems:
        return Gate("node_has_recovered", True,
                    f"{host}: database load back under the thresholds ({_load_text(load, cpu)}); "
                    f"{hit} (target {params.target_hit_ratio:.0%})", figures)
    return Gate("node_has_recovered", False,
                f"{host}: {hit} (target {params.target_hit_ratio:.0%}); " + "; ".join(problems),
                figures)


def node_restarted(host: str, before: MemcacheStats | Unavailable,
                   after: MemcacheStats | Exception) -> Gate:
    """Is the node a new memcached process that answers `stats` (new pid, or uptime reset)?"""
    if isinstance(after, Exception):
        return Gate("node_restarted", False, f"{host}: no answer to `stats`: {after}")
    figures = {"pid": after.pid, "uptime": after.uptime}
    if not isinstance(before, MemcacheStats):
        return Gate("node_restarted", True,
                    f"{host}: answers `stats` (pid {after.pid}; it was down before)", figures)
    figures.update(pid_before=before.pid, uptime_before=before.uptime)
    if restarted_between(before, after):
        return Gate("node_restarted", True, f"{host}: new process: pid {before.pid} -> "
                    f"{after.pid}, uptime {before.uptime} s -> {after.uptime} s", figures)
    return Gate("node_restarted", False, f"{host}: still the same process (pid {after.pid}, "
                f"up {after.uptime} s)", figures)


def other_nodes_are_up(host: str, nodes: dict[str, MemcacheStats | Unavailable]) -> Gate:
    """Restart `host` only while every other node answers: never two nodes down at once."""
    down = {h: r for h, r in nodes.items() if h != host and not isinstance(r, MemcacheStats)}
    figures = {h: ({"pid": r.pid, "uptime": r.uptime} if isinstance(r, MemcacheStats)
                   else {"up": False}) for h, r in nodes.items()}
    if down:
        return Gate("other_nodes_are_up", False, "other memcached nodes down: " + "; ".join(
            f"{h} ({getattr(r, 'reason', r)})" for h, r in down.items()), figures)
    others = [h for h in nodes if h != host]
    return Gate("other_nodes_are_up", True,
                f"every other node answers ({', '.join(others)})" if others else "no other node",
                figures)


# -- the steps, recorded into the report -----------------------------------------------------------


@dataclass(frozen=True)
class LoadSample:
    """One sample of the database: its load over sample_seconds, its CPU, and when the SQL
    window ended (epoch seconds)."""

    load: DbLoad | Exception
    cpu: MetricPoint | None | Exception
    at: float


@dataclass(frozen=True)
class Restarted:
    """A node that came back as a new process: its first `stats`, and when (epoch seconds)."""

    host: str
    stats: MemcacheStats
    restart_started_at: float
    answered_at: float

    def timings(self, recovered_at: float | None) -> dict[str, Any]:
        return {"restart_started_at": round(self.restart_started_at, 3),
                "answered_at": round(self.answered_at, 3),
                "restart_seconds": round(self.answered_at - self.restart_started_at, 2),
                "recovered_at": None if recovered_at is None else round(recovered_at, 3),
                "recovery_seconds": (None if recovered_at is None
                                     else round(recovered_at - self.answered_at, 2))}


class _Run:
    """The run's reads and steps; every reading, gate and result goes into the report."""

    def __init__(self, inventory: Any, params: RestartMemcacheParams, report: Report, log: Any):
        self.inventory, self.params, self.report, self.log = inventory, params, report, log

    def t(self) -> float:
        """Seconds since the run started (the time axis of the readings)."""
        return round(time.time() - self.report.started, 2)

    async def sample_load(self) -> LoadSample:
        """The database's load over sample_seconds (SQL) and its CPU (CloudWatch), at once."""
        async def db() -> tuple[DbLoad | Exception, float]:
            try:
                load: DbLoad | Exception = await attempt(
                    lambda: read_db_load(self.inventory, self.params.sample_seconds))
            except (Unavailable, DatabaseRefused) as e:
                load = e
            return load, time.time()

        async def cpu() -> MetricPoint | None | Exception:
            try:
                points = await attempt(lambda: read_aurora_metrics(
                    self.inventory, ("CPUUtilization",), period=CPU_PERIOD, window=CPU_WINDOW))
                return points["CPUUtilization"]
            except (Unavailable, AwsError) as e:
                return e

        (load, at), cpu_point = await asyncio.gather(db(), cpu())
        return LoadSample(load, cpu_point, at)

    def figures(self, sample: LoadSample, **more: Any) -> dict[str, Any]:
        """A reading's figures: when (`t` since the run started, `at` the end of the SQL
        window, epoch seconds), then `more`, then the database's load."""
        return {"t": self.t(), "at": round(sample.at, 2), **more,
                **load_figures(sample.load, sample.cpu)}

    async def read_load(self, what: str) -> None:
        self.report.reading(what, self.figures(await self.sample_load()))

    async def read_nodes(self, hosts: list[str], when: str) -> None:
        for h, r in (await read_memcached_nodes(self.inventory, hosts)).items():
            self.report.reading(f"{h} {when}", {"t": self.t(), **_node_figures(r)})

    async def wait_for_low_load(self, host: str) -> Gate:
        """`db_load_is_low`, polled every sample_seconds for up to wait_for_load seconds."""
        deadline = time.monotonic() + self.params.wait_for_load
        while True:
            sample = await self.sample_load()
            gate = db_load_is_low(sample.load, sample.cpu, self.params)
            self.report.reading(f"{host} gate", self.figures(sample, ok=gate.ok))
            if gate.ok or time.monotonic() >= deadline:
                return gate
            self.log.warning("%s: waiting (up to %.0f s more): %s", host,
                             deadline - time.monotonic(), gate.reason)

    async def restart_and_verify(self, host: str, before: MemcacheStats | Unavailable
                                 ) -> Restarted | None:
        """Restart the node, then wait for it to answer as a new process; recorded.
        None: the restart failed (the flow halts)."""
        self.log.warning("%s: restarting memcached (it comes back empty)", host)
        started, at = time.monotonic(), time.time()
        try:
            result = await restart_memcached(self.inventory, host)
            failure = (None if result.ok else
                       f"memcached.restart exited {result.exit_status}: "
                       f"{(result.stderr or result.stdout).strip()[:200]}")
        except SshError as e:  # the restart is not repeated: what the node says decides
            failure = f"memcached.restart did not run to the end: {e}"
        deadline = time.monotonic() + self.params.verify_seconds
        while True:
            try:
                after: MemcacheStats | Exception = await read_memcached_node(self.inventory, host)
            except Unavailable as e:
                after = e
            gate = node_restarted(host, before, after)
            if gate.ok or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.2)
        answered = time.time()
        self.report.gate(gate)
        self.report.reading(f"{host} restarted", {"t": self.t(), **_node_figures(after)})
        if failure or not gate.ok or not isinstance(after, MemcacheStats):
            why = "; ".join(x for x in (failure, None if gate.ok else gate.reason) if x)
            self.log.error("%s: %s", host, why)
            self.report.record(host, RESTART, Outcome.FAILED, why, started)
            self.report.reading(f"{host} timings", {"restart_started_at": round(at, 3),
                                                    "restart_seconds": round(answered - at, 2)})
            return None
        self.log.info("%s: %s", host, gate.reason)
        self.report.record(host, RESTART, Outcome.DONE, gate.reason, started)
        return Restarted(host, after, at, answered)

    async def watch_recovery(self, node: Restarted, untouched: str) -> bool:
        """Sample the database and the node every sample_seconds until the node has recovered
        (True), or the load crosses a ceiling, the node stops answering or time runs out
        (False: recorded and halted)."""
        p, report, host = self.params, self.report, node.host
        started = time.monotonic()
        prev = node.stats

        def stop(why: str, halt: str) -> bool:
            self.log.error("%s; %s", why, untouched)
            report.record(host, RECOVER, Outcome.FAILED, why, started)
            report.halt(f"{halt}; {untouched}")
            report.reading(f"{host} timings", node.timings(None))
            return False

        while True:
            sample = await self.sample_load()
            load, cpu = sample.load, sample.cpu
            try:
                cur: MemcacheStats | Exception = await read_memcached_node(self.inventory, host)
            except Unavailable as e:
                cur = e
            elapsed = time.monotonic() - started
            if isinstance(cur, Exception):
                report.reading(f"{host} watch", self.figures(
                    sample, since_restart=round(elapsed, 1), up=False))
                why = f"{host} stopped answering after its restart: {cur}"
                return stop(why, why)
            recovered = node_has_recovered(host, prev, cur, load, cpu, p)
            report.reading(f"{host} watch", {
                **self.figures(sample, since_restart=round(elapsed, 1)), **recovered.readings})
            ceiling = db_load_is_under_ceiling(load, cpu, p)
            if not ceiling.ok:  # first: a recovered hit ratio never hides a database in trouble
                report.gate(ceiling)
                return stop(f"STOPPED {elapsed:.1f} s after restarting {host}: {ceiling.reason}",
                            f"{ceiling.reason} after restarting {host}")
            if recovered.ok:
                report.gate(recovered)
                self.log.info("%s: recovered after %.1f s: %s", host, elapsed, recovered.reason)
                report.record(host, RECOVER, Outcome.DONE,
                              f"recovered after {elapsed:.1f} s: {recovered.reason}", started)
                report.reading(f"{host} timings", node.timings(time.time()))
                return True
            if elapsed >= p.recovery_timeout:
                report.gate(recovered)
                why = f"not recovered within {p.recovery_timeout:g} s: {recovered.reason}"
                return stop(f"{host} {why}", f"{host} {why}")
            self.log.info("%s: %.1f s after the restart, not recovered yet: %s", host, elapsed,
                          recovered.reason)
            prev = cur


def _node_figures(r: MemcacheStats | Exception) -> dict[str, Any]:
    if isinstance(r, MemcacheStats):
        return {"up": True, "pid": r.pid, "uptime": r.uptime, "items": r.curr_items,
                "get_hits": r.get_hits, "get_misses": r.get_misses}
    return {"up": False, "error": str(r)}
