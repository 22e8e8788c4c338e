"""ensure-ddlockd: start any ddlockd that is down. Never restart a running one.

The notes (ddlockd): "Given that it's a locking system, it won't actually restart. The following
command will start them up if they're down, that's it." A restart would drop every lock.

1. Load the inventory and check the requested hosts.
2. Plan: for each ddlockd host, start it if it is down. Publish the plan; a dry run stops here.
3. Read every daemon's `status`.
4. For each daemon that is down, in order: start it with its init script, then verify it answers
   `status`. A failure halts the run; the daemons after it are not touched.
5. Daemons that answered are left alone. Publish the report.
Running it twice changes nothing the second time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prefect import flow, get_run_logger
from pydantic import Field

from dwops.inventory import Inventory, resolve_inventory
from dwops.runbook import (HOST_LIST, ChangeParams, Gate, HostNames, Outcome, Plan, Report, Step,
                           finish, hosts_of, publish_plan)
from tasks.common import per_host
from tasks.ddlockd import DdlockdStatus, read_ddlockd_status, start_ddlockd
from tasks.ssh import ssh_session


class EnsureDdlockdParams(ChangeParams):
    hosts: HostNames = HOST_LIST
    verify_seconds: float = Field(10, ge=1, le=120,
                                  description="how long a started daemon has to answer `status`")

    def check_inventory(self, inventory: Inventory) -> None:
        hosts_of(inventory, "ddlockd", self.hosts)


@flow(name="ensure-ddlockd", description="Start any ddlockd that is down; never restart one.")
async def ensure_ddlockd(params: EnsureDdlockdParams = EnsureDdlockdParams()) -> dict[str, Any]:
    log = get_run_logger()

    # 1. Inventory and hosts.
    inventory = resolve_inventory(params.inventory)
    params.check_inventory(inventory)
    hosts = hosts_of(inventory, "ddlockd", params.hosts)
    port = inventory.service("ddlockd").port or 7002

    # 2. The plan.
    plan = Plan("ensure-ddlockd", inventory.name,
                [Step(h, "start if down", "ddlockd.start, then verify `status`") for h in hosts],
                gates=["a daemon that answers `status` is never touched"])
    await publish_plan(plan)
    report = Report("ensure-ddlockd", inventory.name, plan, dry_run=params.dry_run)
    if params.dry_run:
        return await finish(report, log)

    async def status(h: str) -> DdlockdStatus:
        return await read_ddlockd_status(inventory.host(h).address, port)

    async with ssh_session(inventory):
        # 3. Read every daemon.
        before = await per_host(hosts, status)
        for h, s in before.items():
            report.reading(f"{h} before", _figures(s))

        # 4. Start what is down, one at a time, verifying each.
        for h in hosts:
            gate = report.gate(_is_down(h, before[h]))
            if not gate.ok:
                log.info("%s: %s", h, gate.reason)
                report.record(h, "start if down", Outcome.SKIPPED, gate.reason)
                continue
            log.warning("%s: ddlockd is down (%s); starting it", h, gate.reason)
            started = time.monotonic()
            result = await start_ddlockd(inventory, h)
            answer = await _wait_answering(status, h, params.verify_seconds)
            if result.exit_status != 0 or isinstance(answer, Exception):
                why = (f"start exited {result.exit_status}: {result.stderr.strip()[:200]}"
                       if result.exit_status else f"started, but no answer: {answer}")
                report.record(h, "start if down", Outcome.FAILED, why, started)
                report.halt(f"ddlockd on {h} did not come up")
                break
            report.record(h, "start if down", Outcome.DONE,
                          f"started; answers status (runtime {answer.runtime} s)", started)
            report.reading(f"{h} after", _figures(answer))

    # 5. The report.
    return await finish(report, log)


def _is_down(host: str, reading: DdlockdStatus | Exception) -> Gate:
    """Only a daemon that does not answer may be started: a running one holds locks."""
    if isinstance(reading, Exception):
        return Gate("ddlockd is down", True, f"no answer: {reading}")
    return Gate("ddlockd is down", False,
                f"already running {reading.runtime} s; never restarted (it would drop every lock)")


async def _wait_answering(status, host: str, seconds: float) -> DdlockdStatus | Exception:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await status(host)
        except Exception as e:  # noqa: BLE001 - keep polling until the deadline
            if time.monotonic() > deadline:
                return e
            await asyncio.sleep(0.2)


def _figures(s: DdlockdStatus | Exception) -> dict[str, Any]:
    if isinstance(s, Exception):
        return {"up": False, "error": str(s)}
    return {"up": True, "runtime": s.runtime, "successes": s.successes, "load": s.load}
