"""gearmand's admin text protocol: the only module that talks to the job servers.

Dreamwidth ran the Perl job server (Gearman::Server 1.130.1, `/usr/bin/gearmand`); the C server
(gearmand 1.1.20, `/usr/sbin/gearmand`) speaks the same admin commands on the same port:

- `status` -> `FUNCTION\\tTOTAL\\tRUNNING\\tAVAILABLE_WORKERS\\n` rows, then `.\\n`. TOTAL counts
  queued AND running jobs. Perl sorts the rows and lists only functions that have workers or jobs;
  C lists them in hash order and keeps functions it has seen at `0 0 0`. A function name may hold a
  tab (Gearman::Worker's `prefix\\tfunc`), so the numbers are taken from the right.
- `workers` -> `FD IP CLIENT-ID : FUNCTION ...\\n` rows, then `.\\n`; CLIENT-ID is `-` when the
  connection never set one (our own admin connection shows up that way). Perl writes `: ` with a
  trailing space when there is no function, C writes `:`.
- `version` -> C `OK 1.1.20+ds\\n`, Perl `v1.130.1\\n`.
- Errors: `ERR CODE TEXT\\r\\n` (Perl `ERR unknown_command \\r\\n`, C `ERR UNKNOWN_COMMAND ...`).

Pure parsers (`parse_*`) are kept apart from the reads (`read_*`) and the judge; every read has
an explicit timeout. `check_gearman` is the fleet-status task.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NO_CACHE

from dwops.errors import Unavailable
from dwops.health import Check, Thresholds, Verdict, unreachable
from dwops.inventory import Inventory
from tasks.common import READ, per_host

if TYPE_CHECKING:
    from tasks.ssh import CommandResult

DEFAULT_PORT = 7003  # Dreamwidth's; gearmand's own default is 4730
_READ_LIMIT = 1 << 22  # longest reply we accept (one row per function or connection)


class GearmanUnavailable(Unavailable):
    """A job server could not be reached or stopped answering (refused, reset, timed out)."""

    def __init__(self, address: str, port: int, reason: str) -> None:
        super().__init__(f"gearmand {address}:{port}", reason)
        self.address = address
        self.port = port


class GearmanProtocolError(Exception):
    """A job server answered an admin command with an error or something unparseable."""


@dataclass(frozen=True)
class QueueDepth:
    """One `status` row: a function's jobs (total includes the running ones) and its workers."""

    function: str
    total: int
    running: int
    workers: int

    @property
    def waiting(self) -> int:
        """Jobs queued and not yet handed to a worker."""
        return self.total - self.running


@dataclass(frozen=True)
class GearmanWorker:
    """One `workers` row: a connection to the job server and the functions it registered."""

    fd: int
    ip: str
    client_id: str  # "-" when the connection set none
    functions: tuple[str, ...]


@dataclass(frozen=True)
class GearmanVersion:
    """What `version` says: which implementation ("perl" or "c") and its version string."""

    kind: str
    version: str


# -- pure parsers ----------------------------------------------------------------------------------


def _rows(reply: str, command: str) -> list[str]:
    """The rows of a `.`-terminated admin reply, without the terminator."""
    if reply.startswith("ERR "):
        raise GearmanProtocolError(f"gearmand answered {command!r} with {reply.strip()!r}")
    lines = reply.split("\n")
    try:
        end = lines.index(".")
    except ValueError:
        raise GearmanProtocolError(f"gearmand {command} reply has no '.' line: {reply!r}") from None
    return [line for line in lines[:end] if line]


def parse_gearman_status(reply: str) -> list[QueueDepth]:
    """gearmand admin `status`: FUNCTION\\tTOTAL\\tRUNNING\\tWORKERS rows, then '.'.

    TOTAL includes the running jobs.
    """
    depths = []
    for row in _rows(reply, "status"):
        function, *numbers = row.rsplit("\t", 3)
        try:
            total, running, workers = (int(n) for n in numbers)
        except ValueError:  # not three numbers
            raise GearmanProtocolError(f"unexpected gearman status row: {row!r}") from None
        depths.append(QueueDepth(function=function, total=total, running=running, workers=workers))
    return depths


def parse_gearman_workers(reply: str) -> list[GearmanWorker]:
    """gearmand admin `workers`: `FD IP CLIENT-ID : FUNCTION ...` rows, then '.'."""
    workers = []
    for row in _rows(reply, "workers"):
        words = [word for word in row.split(" ") if word]
        if len(words) < 4 or words[3] != ":" or not words[0].isdigit():
            raise GearmanProtocolError(f"unexpected gearman workers row: {row!r}")
        workers.append(
            GearmanWorker(
                fd=int(words[0]), ip=words[1], client_id=words[2], functions=tuple(words[4:])
            )
        )
    return workers


def parse_gearman_version(reply: str) -> GearmanVersion:
    """gearmand admin `version`: `OK 1.1.20+ds` from the C server, `v1.130.1` from the Perl one."""
    line = reply.strip()
    if line.startswith("OK "):
        return GearmanVersion(kind="c", version=line[3:].strip())
    if line.startswith("v") and line[1:2].isdigit():
        return GearmanVersion(kind="perl", version=line[1:])
    raise GearmanProtocolError(f"unexpected gearman version reply: {reply!r}")


def _os_reason(exc: OSError) -> str:
    """A short reason for a socket error: "Connection refused" rather than asyncio's long text."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


# -- reads -----------------------------------------------------------------------------------------


async def _admin_command(
    address: str, port: int, command: str, *, multiline: bool, timeout: float
) -> str:
    """Send one admin command on a fresh connection and return the raw reply text.

    A multi-line reply is read up to its `.` line, a single-line one up to its newline; an
    `ERR` line ends either. The whole exchange, connect included, is bounded by `timeout`.
    """
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(address, port, limit=_READ_LIMIT)
            writer.write(command.encode("ascii") + b"\n")
            await writer.drain()
            lines = []
            while True:
                line = await reader.readuntil(b"\n")
                lines.append(line)
                error = len(lines) == 1 and line.startswith(b"ERR ")
                if not multiline or line == b".\n" or error:
                    break
    except TimeoutError:
        reason = f"no {command!r} reply within {timeout} s"
        raise GearmanUnavailable(address, port, reason) from None
    except asyncio.IncompleteReadError:
        raise GearmanUnavailable(address, port, f"connection closed during {command!r}") from None
    except asyncio.LimitOverrunError:
        message = f"gearmand {command} reply longer than {_READ_LIMIT} bytes"
        raise GearmanProtocolError(message) from None
    except OSError as exc:
        raise GearmanUnavailable(address, port, _os_reason(exc)) from None
    finally:
        if writer is not None:
            writer.close()
    return b"".join(lines).decode("utf-8", errors="replace")


async def read_gearman_status(
    address: str, port: int = DEFAULT_PORT, timeout: float = 3.0
) -> list[QueueDepth]:
    """Read a job server's queue depths (admin `status`). Read-only: safe to retry."""
    reply = await _admin_command(address, port, "status", multiline=True, timeout=timeout)
    return parse_gearman_status(reply)


async def read_gearman_workers(
    address: str, port: int = DEFAULT_PORT, timeout: float = 3.0
) -> list[GearmanWorker]:
    """Read a job server's connections and their functions (admin `workers`). Safe to retry."""
    reply = await _admin_command(address, port, "workers", multiline=True, timeout=timeout)
    return parse_gearman_workers(reply)


async def read_gearman_version(
    address: str, port: int = DEFAULT_PORT, timeout: float = 3.0
) -> GearmanVersion:
    """Read which job server runs and its version (admin `version`). Read-only: safe to retry."""
    reply = await _admin_command(address, port, "version", multiline=False, timeout=timeout)
    return parse_gearman_version(reply)


# -- judging and the fleet-status task --------------------------------------------------------------

@dataclass(frozen=True)
class GearmanReading:
    version: GearmanVersion
    queues: list[QueueDepth]


async def read_gearman(address: str, port: int, timeout: float = 3.0) -> GearmanReading:
    """`version` and `status` of one job server. Read-only; safe to retry."""
    version = await read_gearman_version(address, port, timeout)
    return GearmanReading(version, await read_gearman_status(address, port, timeout))


def judge_gearman(host: str, reading: "GearmanReading | Unavailable", waiting_warn: int) -> Check:
    """Down is CRIT (the notes: "if this goes down, it should be started back up"); a function
    with jobs waiting and no worker, or a deep queue, is WARN."""
    if isinstance(reading, Unavailable):
        return unreachable("gearman", host, reading.reason)
    waiting = sum(q.waiting for q in reading.queues)
    orphaned = [q.function for q in reading.queues if q.waiting and not q.workers]
    figures = {"server": f"{reading.version.kind} {reading.version.version}", "waiting": waiting,
               "functions": {q.function: {"total": q.total, "running": q.running,
                                          "workers": q.workers} for q in reading.queues}}
    if orphaned:
        return Check("gearman", host, Verdict.WARN,
                     f"jobs waiting with no worker: {', '.join(orphaned)}", figures)
    if waiting >= waiting_warn:
        return Check("gearman", host, Verdict.WARN, f"{waiting} jobs waiting", figures)
    return Check("gearman", host, Verdict.OK,
                 f"up ({figures['server']}), {len(reading.queues)} functions, {waiting} waiting",
                 figures)


@task(name="check-gearman", **READ)
async def check_gearman(inventory: Inventory, thresholds: Thresholds) -> list[Check]:
    """Read every gearman job server of the inventory and judge each. Read-only."""
    service = inventory.service("gearman")
    readings = await per_host(service.hosts, lambda h: read_gearman(
        inventory.host(h).address, service.port or DEFAULT_PORT))
    return [judge_gearman(h, r, thresholds.gearman_waiting_warn) for h, r in readings.items()]


# -- changes ---------------------------------------------------------------------------------------
# Both run the inventory's init-script command over SSH (the notes: "SSH to the servers that run
# gearman and use the /etc/init.d/gearman-server script"). The flow decides whether to run them.

@task(name="start-gearman", cache_policy=NO_CACHE)
async def start_gearman(inventory: Inventory, host: str, *, timeout: float | None = None
                        ) -> "CommandResult":
    """Start the job server of `host` with its init script (`gearman.start`) over SSH. Changes the
    host; never retried: the flow re-reads the server and decides. A non-zero exit is a result."""
    from tasks.ssh import ssh_pool

    async with ssh_pool(inventory) as pool:
        return await pool.run(host, "gearman.start", timeout=timeout)


@task(name="restart-gearman", cache_policy=NO_CACHE)
async def restart_gearman(inventory: Inventory, host: str, *, timeout: float | None = None
                          ) -> "CommandResult":
    """Restart the job server of `host` with its init script (`gearman.restart`) over SSH.

    Changes the host and LOSES every job the server holds (the queue lives in its memory): the
    flow reads and reports the queue first and decides. Never retried.
    """
    from tasks.ssh import ssh_pool

    async with ssh_pool(inventory) as pool:
        return await pool.run(host, "gearman.restart", timeout=timeout)
