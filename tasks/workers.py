"""The job workers on the jobs hosts, as `ps` shows them over SSH (the notes: "you can see if
they're running by looking at ps on the machine"), with the content-importers' states; and the
one change: restarting them all with the admin host's `bin/restart-jobs` (the notes' Workers
section).

`ps` (the inventory's `workers.ps`: pid, tty, stat, time, args; no parent pid) tells a worker
from the host's other processes by its title: Dreamwidth's workers are `bin/worker/NAME` scripts
that bin/worker-manager runs, and they show as `NAME`, `NAME [STATE]` once they set their title
(`content-importer [bored]`, `send-email [idle]`) or as `... bin/worker/NAME` before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from dwops.health import Check, Thresholds, Verdict, unreachable
from dwops.inventory import Inventory
from tasks.importers import ImporterProcess, parse_importer_ps
from tasks.ssh import CommandResult, SshError, ssh_pool

_MANAGER = re.compile(r"^\s*(\d+)\s+\S+\s+\S+\s+\S+\s+(?:\S*/)?(?:perl \S*)?worker-manager\b", re.M)
_PS_LINE = re.compile(r"^\s*(?P<pid>\d+)\s+\S+\s+\S+\s+[\d:.-]+\s+(?P<args>.*?)\s*$")

# Dreamwidth's workers (its bin/worker/ scripts) that bin/worker-manager runs from
# etc/workers.conf. A process titled with one of these names (alone or followed by ` [`) is a
# worker; so is one still running as `... bin/worker/NAME` under any name.
DREAMWIDTH_WORKERS = frozenset("""
    birthday-notify change-poster-id codebuild-notifier content-importer content-importer-lite
    content-importer-verify delete-old-faqs directory-meta distribute-invites embeds
    esn-cluster-subs esn-cluster-subs-mass esn-filter-subs esn-filter-subs-mass esn-fired-event
    esn-fired-event-mass esn-process-sub esn-process-sub-mass expunge-users friendchange
    import-eraser import-scheduler incoming-email lastfm-current-track latest-feed lazy-cleanup
    ljtalk-gm load-friends-gm metrics-emitter notify_pingback paidstatus payment ping-hubbub
    ping-weblogscom process-esn process-esn-mass process-eventlogrecord process-privacy
    process-sms resolve-extacct schedule-synsuck scheduled-posts search-constraints
    search-lookup search-updater send-email send-email-mass send-email-ses ses-email-events
    ses-incoming-email shop-creditcard-charge spellcheck-gm sphinx-copier sphinx-search-gm
    stats-collection subscribe-hubbub support-notify syn-suck synsuck sysban-gm taglib-gm
    talklib-gm update-fb-friends userpic-rename userpic-resize-gm web-autoscaler xpost
""".split())
_SCRIPT = re.compile(r"(?:^|\s)\S*bin/worker/(?P<name>[A-Za-z0-9_.-]+)(?:\s|$)")


@dataclass(frozen=True)
class WorkerProcess:
    """One worker process bin/worker-manager runs: its pid, worker name and title."""

    pid: int
    name: str
    title: str


@dataclass(frozen=True)
class WorkersReading:
    manager_running: bool
    importers: list[ImporterProcess]
    manager_pids: tuple[int, ...] = ()
    workers: tuple[WorkerProcess, ...] = ()  # every worker, the content-importers included

    @property
    def busy(self) -> list[ImporterProcess]:
        return [p for p in self.importers if not p.bored]

    def worker_counts(self) -> dict[str, int]:
        """How many processes of each worker run, by name."""
        counts: dict[str, int] = {}
        for w in self.workers:
            counts[w.name] = counts.get(w.name, 0) + 1
        return dict(sorted(counts.items()))

    @property
    def worker_pids(self) -> set[int]:
        return {w.pid for w in self.workers}


def worker_name(args: str) -> str | None:
    """The Dreamwidth worker a process's args or title names, or None when it is no worker."""
    m = _SCRIPT.search(args)
    if m:
        return m.group("name")
    first = args.split(" [", 1)[0] if " [" in args else args
    return first if first in DREAMWIDTH_WORKERS else None


def parse_workers_ps(output: str) -> WorkersReading:
    """A jobs host's `ps -ww -eo pid,tty,stat,bsdtime,args`: the worker-manager's pid(s), every
    worker process, and what every content-importer is doing."""
    workers = []
    for line in output.splitlines():
        m = _PS_LINE.match(line)
        if m and (name := worker_name(m.group("args"))):
            workers.append(WorkerProcess(int(m.group("pid")), name, m.group("args")))
    managers = tuple(int(pid) for pid in _MANAGER.findall(output))
    return WorkersReading(bool(managers), parse_importer_ps(output), managers, tuple(workers))


def describe_import(p: ImporterProcess) -> str:
    """`entries: user0042(42) getevents - 100 to 199` - what an import would lose."""
    who = f"{p.user}({p.userid})" if p.user else f"pid {p.pid}"
    return f"{p.state}: {who}" + (f" {p.progress}" if p.progress else "")


def import_pause(kind: str) -> str:
    """How long an import of `kind` stays paused when its importer is killed: until its job's
    lease runs out (Entries.pm leases 12 h, Comments.pm 72 h, the others keep TheSchwartz's
    600 s grab); a title we cannot read may be any of them."""
    pauses = {"entries": "12 h", "comments": "72 h", "unknown": "up to 72 h"}
    return pauses.get(kind, "up to 10 min")


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


# -- the change: restart every jobs host's workers -------------------------------------------------

def restart_jobs_host(inventory: Inventory) -> str:
    """The admin host that allows `restart_jobs` (the notes: `bin/restart-jobs` on dfw-admin01).

    Raises KeyError when no host, or more than one, allows it: which one to use is the
    inventory's to say, never a guess."""
    hosts = [h for h in inventory.hosts if "restart_jobs" in inventory.host(h).commands]
    if len(hosts) != 1:
        raise KeyError(f"inventory {inventory.name!r} needs exactly one host with the command "
                       f"restart_jobs, found {', '.join(hosts) or 'none'}")
    return hosts[0]


@task(name="restart-workers", cache_policy=NO_CACHE)
async def restart_workers(inventory: Inventory) -> CommandResult:
    """Restart the workers of every jobs host: `restart_jobs` on its admin host over SSH.

    CHANGES PRODUCTION: each worker-manager TERMs its workers and KILLs what is still running
    after 10 s, so a busy content-importer loses its import (it pauses for its job's lease, 12 h
    for entries). Never retried: the flow re-reads the workers and decides. A timeout raises
    SshUnavailable; a non-zero exit is returned as the result.
    """
    host = restart_jobs_host(inventory)
    async with ssh_pool(inventory) as pool:
        return await pool.run(host, "restart_jobs")


# -- holding the content-importers still while the restart decides --------------------------------

FREEZE, THAW = "freeze_importers", "thaw_importers"  # commands of the `workers` service


def freeze_commands_missing(inventory: Inventory) -> list[str]:
    """The importer freeze/thaw commands the inventory's `workers` service lacks (none: [])."""
    commands = inventory.services["workers"].commands if "workers" in inventory.services else {}
    return [c for c in (FREEZE, THAW) if c not in commands]


async def _everywhere(inventory: Inventory, command: str) -> dict[str, str | None]:
    """Run `command` on every jobs host at once: host -> None when it worked, else the error."""
    async with ssh_pool(inventory) as pool:
        results = await pool.run_everywhere(inventory.hosts_for("workers"), f"workers.{command}")
    return {h: (str(r) if isinstance(r, SshError) else None if r.ok else
                f"{h}: exited {r.exit_status}: {(r.stderr or r.stdout).strip()[-200:]}")
            for h, r in results.items()}


@task(name="freeze-importers", cache_policy=NO_CACHE)
async def freeze_importers(inventory: Inventory) -> dict[str, str | None]:
    """SIGSTOP every content-importer on every jobs host (`workers.freeze_importers`), so that no
    importer can grab an import between the flow's last read and the restart.

    CHANGES PRODUCTION, briefly: a frozen importer neither grabs nor progresses. The command
    leaves a dead man's thaw on the host (SIGCONT two minutes later, whatever becomes of this
    run); the flow thaws at once on every path that does not restart. Never retried: the flow
    reads `ps` to see which importers are frozen."""
    return await _everywhere(inventory, FREEZE)


@task(name="thaw-importers", cache_policy=NO_CACHE)
async def thaw_importers(inventory: Inventory) -> dict[str, str | None]:
    """SIGCONT every content-importer on every jobs host (`workers.thaw_importers`); harmless on
    processes that were never frozen. A host where it failed thaws by its dead man's thaw."""
    return await _everywhere(inventory, THAW)
