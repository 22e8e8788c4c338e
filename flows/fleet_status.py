"""fleet-status: what state is production in? Every system of the production notes, read at once.

1. Load the inventory (a bad one fails here, before anything is touched).
2. Read every system concurrently, read-only, each host's answer collected before judging:
   SSH logins, gearman, ddlockd, workers and content-importers, memcached, TheSchwartz, Aurora
   (RDS, CloudWatch and SQL load), webs (/admin/healthy and the ALB), mail (Postfix queue, SES)
   and the edge (CloudFront, WAF).
3. Judge each reading OK, WARN or CRIT with a one-line reason.
4. Publish a table and a summary as keyed artifacts (their history compares run to run).
5. Fail the run on CRIT, naming every critical check.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.events import emit_event
from pydantic import BaseModel, ConfigDict, Field

from dwops.health import Check, Thresholds, Verdict, worst
from dwops.inventory import Inventory, resolve_inventory
from dwops.runbook import default_inventory
from tasks.aws import check_alb, check_aurora_cluster, check_edge, check_ses
from tasks.database import check_db_load, check_schwartz
from tasks.ddlockd import check_ddlockd
from tasks.gearman import check_gearman
from tasks.workers import check_workers
from tasks.mail import check_mail_queue
from tasks.memcache import check_memcached
from tasks.ssh import check_ssh, ssh_session
from tasks.web import check_webs


class FleetStatusParams(BaseModel):
    """What to read and when a reading is a problem."""

    model_config = ConfigDict(extra="forbid")

    inventory: str = Field(default_factory=default_inventory, min_length=1, max_length=500, pattern=r"^[A-Za-z0-9_./~-]+$",
                           description="`lab`, `production`, or the path of an inventory file")
    thresholds: Thresholds = Field(default_factory=Thresholds)


@dataclass
class FleetReport:
    inventory: str
    checks: list[Check]
    seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> Verdict:
        return worst(self.checks)

    @property
    def critical(self) -> list[Check]:
        return [c for c in self.checks if c.verdict is Verdict.CRIT]

    def counts(self) -> dict[str, int]:
        return {v.value: sum(1 for c in self.checks if c.verdict is v) for v in Verdict}

    def summary_line(self) -> str:
        n = self.counts()
        return (f"{self.inventory}: {self.verdict.value} - {n['OK']} ok, {n['WARN']} warn, "
                f"{n['CRIT']} crit in {self.seconds:.1f} s")

    def as_dict(self) -> dict[str, Any]:
        return {"inventory": self.inventory, "verdict": self.verdict.value,
                "seconds": round(self.seconds, 2), "counts": self.counts(),
                "checks": [c.as_dict() for c in self.checks]}


class FleetCritical(RuntimeError):
    """The fleet has critical checks; carries the whole report."""

    def __init__(self, report: FleetReport):
        self.report = report
        names = "; ".join(f"{c.system}@{c.host}: {c.reason}" for c in report.critical)
        super().__init__(f"{len(report.critical)} critical: {names}")


CHECKS = (check_ssh, check_gearman, check_ddlockd, check_workers, check_memcached,
          check_schwartz, check_db_load, check_aurora_cluster, check_webs, check_alb,
          check_mail_queue, check_ses, check_edge)


@flow(name="fleet-status", description="Read every system of the production notes and judge it.")
async def fleet_status(params: FleetStatusParams = FleetStatusParams()) -> dict[str, Any]:
    log = get_run_logger()
    started = time.monotonic()

    # 1. The inventory.
    inventory = resolve_inventory(params.inventory)

    # 2-3. Every read at once; a check that fails outright is itself a CRIT line.
    async with ssh_session(inventory):
        results = await asyncio.gather(*(check(inventory, params.thresholds) for check in CHECKS),
                                       return_exceptions=True)
    checks: list[Check] = []
    for check, result in zip(CHECKS, results):
        if isinstance(result, BaseException):
            name = check.name.removeprefix("check-")
            log.error("%s could not be checked: %r", name, result)
            checks.append(Check(name, "-", Verdict.CRIT,
                                f"check failed: {type(result).__name__}: {result}"))
        else:
            checks.extend(result)
    report = FleetReport(inventory.name, checks, time.monotonic() - started)
    for c in checks:
        if c.verdict is not Verdict.OK:
            log.warning("%s %s@%s: %s", c.verdict.value, c.system, c.host, c.reason)
    log.info(report.summary_line())

    # 4. Artifacts, keyed per inventory so each run's can be compared with the last; events for
    #    the daemons the notes want started back up when they go down (self-healing automations).
    await publish(report, inventory)
    announce_down(report, inventory)

    # 5. CRIT fails the run.
    if report.critical:
        raise FleetCritical(report)
    return report.as_dict()


async def publish(report: FleetReport, inventory: Inventory) -> None:
    key = f"fleet-status-{inventory.name}".lower().replace("_", "-")
    await acreate_table_artifact(
        key=key,
        table=[{"verdict": c.verdict.value, "system": c.system, "host": c.host, "reason": c.reason}
               for c in sorted(report.checks, key=lambda c: (-c.verdict.rank, c.system, c.host))],
        description=report.summary_line(),
    )
    await acreate_markdown_artifact(key=f"{key}-summary", markdown=summary_markdown(report),
                                    description=report.summary_line())


SELF_HEALED = ("gearman", "ddlockd")


def announce_down(report: FleetReport, inventory: Inventory) -> None:
    """Emit `dwops.service.down` for every self-healed daemon that did not answer."""
    for c in report.checks:
        if c.system in SELF_HEALED and c.verdict is Verdict.CRIT and not c.figures.get(
                "reachable", True):
            emit_event(event="dwops.service.down",
                       resource={"prefect.resource.id": f"dwops.service.{c.system}.{c.host}",
                                 "dwops.system": c.system, "dwops.host": c.host,
                                 "dwops.inventory": inventory.name},
                       payload={"reason": c.reason})


def summary_markdown(report: FleetReport) -> str:
    lines = [f"# Fleet status: {report.verdict.value}", "", report.summary_line(), ""]
    bad = [c for c in report.checks if c.verdict is not Verdict.OK]
    if bad:
        lines += ["| verdict | system | host | reason |", "|---|---|---|---|"]
        lines += [f"| {c.verdict.value} | {c.system} | {c.host} | {c.reason} |"
                  for c in sorted(bad, key=lambda c: (-c.verdict.rank, c.system, c.host))]
    else:
        lines.append("Every check is OK.")
    return "\n".join(lines) + "\n"
