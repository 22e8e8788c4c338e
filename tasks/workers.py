"""The job workers on the jobs hosts, as `ps` shows them over SSH (the notes: "you can see if
they're running by looking at ps on the machine"), with the content-importers' states."""

from __future__ import annotations

import re
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from dwops.health import Check, Thresholds, Verdict, unreachable
from dwops.inventory import Inventory
from tasks.importers import ImporterProcess, parse_importer_ps
from tasks.ssh import SshError, ssh_pool

_MANAGER = re.compile(r"^\s*\d+\s+\S+\s+\S+\s+\S+\s+(?:\S*/)?(?:perl \S*)?worker-manager\b", re.M)


@dataclass(frozen=True)
class WorkersReading:
    manager_running: bool
    importers: list[ImporterProcess]

    @property
    def busy(self) -> list[ImporterProcess]:
        return [p for p in self.importers if not p.bored]


def parse_workers_ps(output: str) -> WorkersReading:
    """A jobs host's `ps -ww -eo pid,tty,stat,bsdtime,args`: is the worker-manager there, and
    what is every content-importer doing."""
    return WorkersReading(bool(_MANAGER.search(output)), parse_importer_ps(output))


def describe_import(p: ImporterProcess) -> str:
    """`entries: user0042(42) getevents - 100 to 199` - what an import would lose."""
    who = f"{p.user}({p.userid})" if p.user else f"pid {p.pid}"
    return f"{p.state}: {who}" + (f" {p.progress}" if p.progress else "")


def judge_workers(host: str, reading: "WorkersReading | SshError") -> Check:
    """No worker-manager is CRIT (no async job runs); no importer is WARN; busy imports are
    normal but named, since they decide when workers may be restarted."""
    if isinstance(reading, SshError):
        return unreachable("workers", host, str(reading).removeprefix(f"{host}: "))
    figures = {"manager": reading.manager_running, "importers": len(reading.importers),
               "bored": len(reading.importers) - len(reading.busy),
               "busy": [describe_import(p) for p in reading.busy]}
    if not reading.manager_running:
        return Check("workers", host, Verdict.CRIT, "worker-manager is not running", figures)
    if not reading.importers:
        return Check("workers", host, Verdict.WARN, "no content-importer running", figures)
    if reading.busy:
        return Check("workers", host, Verdict.OK, f"{len(reading.importers)} importers, busy: "
                     + "; ".join(figures["busy"]), figures)
    return Check("workers", host, Verdict.OK,
                 f"{len(reading.importers)} importers, all bored", figures)


async def read_workers(inventory: Inventory) -> dict[str, WorkersReading | SshError]:
    """`ps` on every jobs host at once. Read-only; safe to retry."""
    hosts = inventory.hosts_for("workers")
    async with ssh_pool(inventory) as pool:
        results = await pool.run_everywhere(hosts, "workers.ps", attempts=2)
    out: dict[str, WorkersReading | SshError] = {}
    for host, r in results.items():
        if isinstance(r, SshError):
            out[host] = r
        elif not r.ok:
            out[host] = SshError(host, f"ps exited {r.exit_status}: {r.stderr.strip()[:200]}")
        else:
            out[host] = parse_workers_ps(r.stdout)
    return out


@task(name="check-workers", cache_policy=NO_CACHE)
async def check_workers(inventory: Inventory, thresholds: Thresholds) -> list[Check]:
    """Read the workers and content-importers of every jobs host and judge each. Read-only."""
    return [judge_workers(h, r) for h, r in (await read_workers(inventory)).items()]
