"""What every runbook flow that changes something shares: parameters, gates, plan, report.

A change flow reads like this (see flows/restart_webs.py):

    params validated (pydantic) -> inventory loaded -> plan computed (pure) and published
    -> dry_run stops here -> gates read and judged -> one step at a time: act, verify
    -> halt at the first failure, everything not reached left untouched -> report published

The report is a markdown artifact keyed `<flow>-report` (so Prefect keeps its history) that says,
per host and with timings, what was done, what failed, what was not reached and why, and the gate
readings before and after. A flow that stops early raises `RunbookHalted` carrying the report.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool

SAFE_TEXT = r"^[A-Za-z0-9 _.,:;()/#@+=-]*$"


def default_inventory() -> str:
    """The worker's inventory (`DWOPS_INVENTORY`: production workers set `production`), else
    the lab's. A run that names no inventory acts on the one its worker is for."""
    return os.environ.get("DWOPS_INVENTORY") or "lab"


class ChangeParams(BaseModel):
    """Parameters every change flow takes. Unknown keys are refused: a misspelt parameter must
    never silently fall back to its default. Safety flags (`dry_run`, `emergency`, `restart`,
    `allow_broad`, ...) are StrictBool: only JSON true/false, never "yes", "true" or 1."""

    model_config = ConfigDict(extra="forbid")

    inventory: str = Field(default_factory=default_inventory, min_length=1, max_length=500, pattern=r"^[A-Za-z0-9_./~-]+$",
                           description="`lab`, `production`, or the path of an inventory file")
    dry_run: StrictBool = Field(False, description="compute and publish the plan, change nothing")
    reason: str = Field("", max_length=200, pattern=SAFE_TEXT,
                        description="why this runs (shown in the report)")

    def check_inventory(self, inventory: Any) -> None:
        """Raise BadParameters for what `inventory` lacks or forbids (a host it does not have, an
        address it never blocks). Pure. `dwops run` calls it before any run exists (exit 2), the
        flow again at its start (a run created through the API). Flows override it."""


class EmergencyParams(ChangeParams):
    """Change flows with an emergency path the production notes allow."""

    NEEDS_APPROVAL_FOR: ClassVar[str] = "its emergency path"

    emergency: StrictBool = Field(False, description="take the emergency path the notes allow: "
                                                     "the run pauses until an operator approves "
                                                     "it")


@dataclass(frozen=True)
class Gate:
    """A named check's verdict: may the flow go on, and why (or why not)."""

    name: str
    ok: bool
    reason: str
    readings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    host: str
    action: str
    detail: str = ""


@dataclass(frozen=True)
class Plan:
    flow: str
    inventory: str
    steps: list[Step]
    gates: list[str]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"# Plan: {self.flow} on {self.inventory}", ""]
        if self.gates:
            lines += ["Gates:", *[f"- {g}" for g in self.gates], ""]
        lines += ["| # | host | action | detail |", "|---|---|---|---|"]
        lines += [f"| {i} | {s.host} | {s.action} | {s.detail} |" for i, s in enumerate(self.steps, 1)]
        if self.notes:
            lines += ["", *[f"- {n}" for n in self.notes]]
        return "\n".join(lines) + "\n"


class Outcome(str, Enum):
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"  # decided not to (a gate, or nothing to do)
    NOT_REACHED = "not reached"  # the run stopped before it


@dataclass
class StepResult:
    host: str
    action: str
    outcome: Outcome
    detail: str
    started: float | None = None
    seconds: float | None = None


@dataclass
class Report:
    flow: str
    inventory: str
    plan: Plan
    results: list[StepResult] = field(default_factory=list)
    gates: list[tuple[str, Gate]] = field(default_factory=list)  # (when, gate)
    readings: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (when, what, figures)
    started: float = field(default_factory=time.time)
    finished: float | None = None
    halted: str | None = None
    dry_run: bool = False
    # The fleet-wide maintenance lock (dwops.maintenance): when this run took it, and when it
    # let it go (None while it holds it). Every read and change of a maintenance run, and its
    # report, fall between the two.
    lock_taken: float | None = None
    lock_released: float | None = None

    # -- recording ---------------------------------------------------------------------------
    def gate(self, gate: Gate) -> Gate:
        self.gates.append((_now(), gate))
        return gate

    def reading(self, what: str, figures: dict[str, Any]) -> None:
        self.readings.append((_now(), what, figures))

    def record(self, host: str, action: str, outcome: Outcome, detail: str,
               started: float | None = None) -> StepResult:
        seconds = None if started is None else time.monotonic() - started
        r = StepResult(host, action, outcome, detail, started, seconds)
        self.results.append(r)
        return r

    def not_reached(self, steps: list[Step], why: str) -> None:
        """Every planned step without a result is recorded as not reached."""
        seen = {(r.host, r.action) for r in self.results}
        for s in steps:
            if (s.host, s.action) not in seen:
                self.results.append(StepResult(s.host, s.action, Outcome.NOT_REACHED, why))

    def halt(self, why: str) -> None:
        self.halted = why
        self.not_reached(self.plan.steps, f"not reached: the run stopped ({why})")

    # -- reading ---------------------------------------------------------------------------
    def done(self) -> list[StepResult]:
        return [r for r in self.results if r.outcome is Outcome.DONE]

    def summary(self) -> str:
        n = {o: sum(1 for r in self.results if r.outcome is o) for o in Outcome}
        head = ("dry run: plan only" if self.dry_run else
                f"HALTED: {self.halted}" if self.halted else "completed")
        return (f"{self.flow} on {self.inventory}: {head} - {n[Outcome.DONE]} done, "
                f"{n[Outcome.FAILED]} failed, {n[Outcome.SKIPPED]} skipped, "
                f"{n[Outcome.NOT_REACHED]} not reached")

    def markdown(self) -> str:
        end = self.finished or time.time()
        lines = [f"# {self.flow}: {self.summary()}", "",
                 f"- inventory: {self.inventory}",
                 f"- started: {_iso(self.started)}, took {end - self.started:.1f} s"]
        if self.lock_taken is not None:
            lines.append(f"- {self.lock_line()}")
        lines.append("")
        lines += ["## Steps", "", "| host | action | outcome | seconds | detail |",
                  "|---|---|---|---|---|"]
        for r in self.results:
            secs = "" if r.seconds is None else f"{r.seconds:.1f}"
            lines.append(f"| {r.host} | {r.action} | {r.outcome.value} | {secs} | {_cell(r.detail)} |")
        if self.gates:
            lines += ["", "## Gates", "", "| when | gate | verdict | reason |", "|---|---|---|---|"]
            lines += [f"| {t} | {g.name} | {'pass' if g.ok else 'HOLD'} | {_cell(g.reason)} |"
                      for t, g in self.gates]
        if self.readings:
            lines += ["", "## Readings", "", "| when | what | figures |", "|---|---|---|"]
            lines += [f"| {t} | {w} | {_cell(_figures(f))} |" for t, w, f in self.readings]
        return "\n".join(lines) + "\n"

    def lock_line(self) -> str:
        """When the run held the maintenance lock, as of now (exact to the microsecond, UTC)."""
        held = f"maintenance lock: taken at {_iso_us(self.lock_taken or 0)}"
        if self.lock_released is None:
            return f"{held}, still held at {_iso_us(self.finished or time.time())} (this report)"
        return f"{held}, released at {_iso_us(self.lock_released)}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "flow": self.flow, "inventory": self.inventory, "summary": self.summary(),
            "halted": self.halted, "dry_run": self.dry_run,
            "lock_taken": self.lock_taken, "lock_released": self.lock_released,
            "results": [{"host": r.host, "action": r.action, "outcome": r.outcome.value,
                         "detail": r.detail, "seconds": r.seconds} for r in self.results],
            "gates": [{"when": t, "name": g.name, "ok": g.ok, "reason": g.reason,
                       "readings": g.readings} for t, g in self.gates],
            "readings": [{"when": t, "what": w, "figures": f} for t, w, f in self.readings],
        }


class RunbookHalted(RuntimeError):
    """A change flow stopped before the end; carries the report (what was and was not done)."""

    def __init__(self, report: Report):
        self.report = report
        super().__init__(report.summary())


def artifact_key(flow: str, suffix: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", f"{flow}-{suffix}".lower())


async def publish_plan(plan: Plan) -> None:
    from prefect.artifacts import acreate_markdown_artifact

    await acreate_markdown_artifact(key=artifact_key(plan.flow, "plan"), markdown=plan.markdown(),
                                    description=f"{plan.flow}: {len(plan.steps)} planned steps")


async def publish_report(report: Report) -> None:
    from prefect.artifacts import acreate_markdown_artifact

    report.finished = report.finished or time.time()
    await acreate_markdown_artifact(key=artifact_key(report.flow, "report"),
                                    markdown=report.markdown(), description=report.summary())


async def finish(report: Report, log: Any) -> dict[str, Any]:
    """Publish the report; raise RunbookHalted if the run stopped early, else return it."""
    report.finished = time.time()
    await publish_report(report)
    (log.error if report.halted else log.info)(report.summary())
    if report.halted:
        raise RunbookHalted(report)
    return report.as_dict()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%H:%M:%S")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso_us(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def _figures(figures: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in figures.items())


class BadParameters(ValueError):
    """Parameters that name what the inventory does not have, or that it forbids: refused before
    any run exists (`dwops run`) and again at a run's start, before any host is touched.
    `field` names the parameter at fault ('' when it is the set as a whole)."""

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.field = field


def hosts_of(inventory: Any, service: str, wanted: list[str] | None) -> list[str]:
    """The service's hosts in inventory order, or the `wanted` subset of them (each checked)."""
    hosts = inventory.hosts_for(service)
    if not wanted:
        return hosts
    unknown = [h for h in wanted if h not in hosts]
    if unknown:
        raise BadParameters(f"{', '.join(unknown)}: not a {service} host of inventory "
                            f"{inventory.name!r} ({', '.join(hosts)})", "hosts")
    return [h for h in hosts if h in wanted]


def _named_once(names: list[str]) -> list[str]:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} named more than once")
    return names


HOST_LIST = Field(default_factory=list, max_length=50, json_schema_extra={"uniqueItems": True},
                  description="only these hosts (default: every host of the service)")
HostName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,62}$", description="an inventory host")]
HostNames = Annotated[list[HostName], AfterValidator(_named_once)]  # each host at most once


@asynccontextmanager
async def maintenance(report: Report) -> AsyncIterator[None]:
    """Hold the fleet-wide maintenance lock (dwops.maintenance) for everything inside: a
    maintenance run takes it before its first read of the fleet and finishes its report (`finish`)
    inside, so no two runs read or change the fleet at the same time. The report records when the
    lock was taken. When another maintenance run holds it, nothing is read or changed: the report
    says so and the run fails."""
    from dwops.maintenance import MaintenanceBusy, maintenance_window

    window = maintenance_window(report.flow)
    try:
        await window.__aenter__()
    except MaintenanceBusy as e:
        report.halt(str(e))
        report.finished = time.time()
        await publish_report(report)
        raise RunbookHalted(report) from None
    report.lock_taken = time.time()
    try:
        yield
    except BaseException as e:
        if not await window.__aexit__(type(e), e, e.__traceback__):
            raise
    else:
        await window.__aexit__(None, None, None)
    finally:
        report.lock_released = time.time()
