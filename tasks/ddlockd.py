"""ddlockd, Danga's distributed lock daemon: the only module that talks to it.

Protocol (Dreamwidth `bin/ddlockd`, client `cgi-bin/DDLockClient.pm`): one command per line, sent
with CRLF; arguments URL-encoded as `k=v&k=v`. The daemon handles one line per read, so a client
sends one command and waits for its whole reply before the next. Replies:

- `trylock lock=NAME` -> `OK \\r\\n`, `ERR taken \\r\\n` (also when this same connection holds it),
  `ERR empty_lock \\r\\n`; `releaselock lock=NAME` -> `OK \\r\\n` / `ERR didnthave \\r\\n`;
  `noop` -> `OK \\r\\n`.
- `status` -> `STATUS: OK\\nSUCCESSES: n\\nFAILURES: n\\nRUNTIME: secs\\nLOAD: n\\n\\n`, written
  line by line (several TCP segments): read up to the blank line.
- `load` -> `LOAD: n\\n\\n`.
- `locks` -> `LOCKS:\\n` then `  NAME = HOLDER` lines joined by `\\n`, then `\\n`. With no lock
  that is `LOCKS:\\n\\n`; with locks there is NO end marker, so we follow it with a `noop` and
  read up to its `OK`.

Locks belong to the TCP connection that took them: closing it releases them all, so a
`DdlockdConnection` holds its locks for as long as it stays open.

Pure parsers (`parse_*`) are kept apart from the I/O (`read_*`, `DdlockdConnection`). Every network
call has an explicit timeout. `check_ddlockd` is the fleet-status task.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import TYPE_CHECKING
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from dwops.errors import Unavailable
from dwops.health import Check, Thresholds, Verdict, unreachable
from dwops.inventory import Inventory
from tasks.common import READ, per_host

if TYPE_CHECKING:
    from tasks.ssh import CommandResult
from types import TracebackType

DEFAULT_PORT = 7002
_READ_LIMIT = 1 << 22  # longest reply we accept (a `locks` listing grows with every held lock)

# DDLockClient's eurl(): everything outside [a-zA-Z0-9_,.\: -] becomes %XX, then space becomes '+'.
_UNRESERVED = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_,.\\: -")


class DdlockdUnavailable(Unavailable):
    """ddlockd could not be reached or stopped answering (refused, reset, timed out)."""

    def __init__(self, address: str, port: int, reason: str) -> None:
        super().__init__(f"ddlockd {address}:{port}", reason)
        self.address = address
        self.port = port


class DdlockdProtocolError(Exception):
    """ddlockd answered something this client does not understand."""


@dataclass(frozen=True)
class DdlockdStatus:
    """The counters of `status`: lock successes and failures since start, uptime, recent load."""

    successes: int
    failures: int
    runtime: int  # seconds since the daemon started
    load: int  # trylock calls in the last ~5 minutes (100 buckets of 3 s)


@dataclass(frozen=True)
class DdlockdLock:
    """One line of `locks`: a held lock and the connection holding it, as ddlockd describes it."""

    name: str
    holder: str  # e.g. "Client::Internal(R): open to 127.0.0.1:50312"


# -- pure functions --------------------------------------------------------------------------------


def encode_lock_name(name: str) -> str:
    """URL-encode a lock name like DDLockClient's eurl() (UTF-8 bytes, %XX, space as '+')."""
    out = []
    for byte in name.encode("utf-8"):
        if byte == 0x20:
            out.append("+")
        elif byte in _UNRESERVED:
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def _fields(reply: str) -> dict[str, str]:
    """`KEY: value` lines of a status-like reply, keys upper-cased; blank lines ignored."""
    fields: dict[str, str] = {}
    for line in reply.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise DdlockdProtocolError(f"unexpected line in ddlockd reply: {line!r}")
        fields[key.strip().upper()] = value.strip()
    return fields


def _int_field(fields: dict[str, str], key: str, reply: str) -> int:
    try:
        return int(fields[key])
    except (KeyError, ValueError):
        raise DdlockdProtocolError(f"ddlockd reply has no integer {key}: {reply!r}") from None


def parse_ddlockd_status(reply: str) -> DdlockdStatus:
    """ddlockd `status`: STATUS: OK, SUCCESSES, FAILURES, RUNTIME, LOAD lines, then a blank line."""
    fields = _fields(reply)
    if fields.get("STATUS") != "OK":
        raise DdlockdProtocolError(f"ddlockd status is not OK: {reply!r}")
    return DdlockdStatus(
        successes=_int_field(fields, "SUCCESSES", reply),
        failures=_int_field(fields, "FAILURES", reply),
        runtime=_int_field(fields, "RUNTIME", reply),
        load=_int_field(fields, "LOAD", reply),
    )


def parse_ddlockd_load(reply: str) -> int:
    """ddlockd `load`: `LOAD: n` then a blank line; n counts trylock calls of the last ~5 min."""
    return _int_field(_fields(reply), "LOAD", reply)


_LOCK_LINE = re.compile(r"^  (?P<name>.*) = (?P<holder>\S+\(R?W?\): (?:open|closed).*)$")


def parse_ddlockd_locks(reply: str) -> list[DdlockdLock]:
    """ddlockd `locks`: `LOCKS:`, then `  NAME = HOLDER` lines sorted by name.

    A trailing `OK` (the noop that `DdlockdConnection.locks` sends to find the end) is ignored.
    """
    lines = reply.split("\n")
    if not lines or lines[0].rstrip("\r") != "LOCKS:":
        raise DdlockdProtocolError(f"not a ddlockd locks reply: {reply!r}")
    locks = []
    for line in lines[1:]:
        if not line or line.rstrip("\r") == "OK ":
            continue
        match = _LOCK_LINE.match(line)
        if not match:
            raise DdlockdProtocolError(f"unexpected line in ddlockd locks reply: {line!r}")
        locks.append(DdlockdLock(name=match["name"], holder=match["holder"]))
    return locks


def _reply_is_ok(command: str, reply: str, refusals: tuple[str, ...]) -> bool:
    """True for `OK ...`, False for an expected `ERR <refusal>`; anything else is an error."""
    if reply.startswith("OK"):
        return True
    code = reply.split(" ", 2)[1] if reply.startswith("ERR ") else ""
    if code in refusals:
        return False
    raise DdlockdProtocolError(f"ddlockd answered {reply!r} to {command!r}")


def _os_reason(exc: OSError) -> str:
    """A short reason for a socket error: "Connection refused" rather than asyncio's long text."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


# -- I/O -------------------------------------------------------------------------------------------


async def _open(
    address: str, port: int, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect within `timeout` seconds, or raise DdlockdUnavailable."""
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(address, port, limit=_READ_LIMIT), timeout
        )
    except asyncio.TimeoutError:
        raise DdlockdUnavailable(address, port, f"connect timed out after {timeout} s") from None
    except OSError as exc:
        raise DdlockdUnavailable(address, port, _os_reason(exc)) from None


async def read_ddlockd_status(
    address: str, port: int = DEFAULT_PORT, timeout: float = 3.0
) -> DdlockdStatus:
    """Read ddlockd's `status` counters on a connection of its own. Read-only: safe to retry.

    The reply comes line by line, possibly in several TCP segments: read up to the blank line.
    """
    async with DdlockdConnection(address, port, timeout=timeout) as conn:
        return parse_ddlockd_status(await conn.command("status", until=b"\n\n"))


class DdlockdConnection:
    """One TCP connection to ddlockd; the locks it takes live until it closes.

    Use as `async with DdlockdConnection(addr, port) as conn: ok = await conn.trylock(name)`.
    Commands are sent one at a time, each waiting for its whole reply (the daemon reads one
    line per read). Each command is bounded by `timeout` seconds; on a timeout, reset or EOF the
    connection is closed (dropping its locks) and `DdlockdUnavailable` is raised.
    """

    def __init__(self, address: str, port: int = DEFAULT_PORT, *, timeout: float = 3.0) -> None:
        self.address = address
        self.port = port
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> "DdlockdConnection":
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the TCP connection (raises DdlockdUnavailable)."""
        self._reader, self._writer = await _open(self.address, self.port, self.timeout)

    async def close(self) -> None:
        """Close the connection; ddlockd releases every lock it held."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is None:
            return
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), self.timeout)
        except (OSError, asyncio.TimeoutError):
            pass

    async def command(self, line: str, *, until: bytes = b"\n") -> str:
        """Send one raw command line and return its reply, read up to and including `until`.

        `line` is one command without its line end; arguments must already be URL-encoded.
        """
        if "\n" in line or "\r" in line:
            raise ValueError(f"one ddlockd command per line: {line!r}")
        if self._reader is None or self._writer is None:
            raise DdlockdUnavailable(self.address, self.port, "connection is not open")
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout):
                    self._writer.write(line.encode("utf-8") + b"\r\n")
                    await self._writer.drain()
                    data = await self._reader.readuntil(until)
            except TimeoutError:
                reason = f"no reply to {line.split(' ')[0]!r} within {self.timeout} s"
            except asyncio.IncompleteReadError:
                reason = "connection closed by ddlockd"
            except asyncio.LimitOverrunError:
                reason = f"reply to {line.split(' ')[0]!r} longer than {_READ_LIMIT} bytes"
            except OSError as exc:
                reason = _os_reason(exc)
            else:
                return data.decode("utf-8", errors="surrogateescape")
        await self.close()
        raise DdlockdUnavailable(self.address, self.port, reason)

    async def trylock(self, name: str) -> bool:
        """Try to take lock `name` for this connection: True if taken, False if held by anyone.

        Not re-entrant: a lock this connection already holds answers False too.
        """
        if not name:
            raise ValueError("ddlockd lock name must not be empty")
        line = f"trylock lock={encode_lock_name(name)}"
        return _reply_is_ok(line, await self.command(line), ("taken",))

    async def releaselock(self, name: str) -> bool:
        """Release lock `name`: True if this connection held it, False (`didnthave`) otherwise."""
        if not name:
            raise ValueError("ddlockd lock name must not be empty")
        line = f"releaselock lock={encode_lock_name(name)}"
        return _reply_is_ok(line, await self.command(line), ("didnthave",))

    async def noop(self) -> None:
        """Send `noop` (a liveness check that changes nothing)."""
        _reply_is_ok("noop", await self.command("noop"), ())

    async def status(self) -> DdlockdStatus:
        """Read `status` on this connection. Read-only."""
        return parse_ddlockd_status(await self.command("status", until=b"\n\n"))

    async def load(self) -> int:
        """Read `load` (trylock calls in the last ~5 minutes) on this connection. Read-only."""
        return parse_ddlockd_load(await self.command("load", until=b"\n\n"))

    async def locks(self) -> list[DdlockdLock]:
        """Read `locks`, every lock held on the daemon. Read-only.

        The reply has no end marker when locks are held, so a `noop` follows it and the reply is
        read up to that `OK`.
        """
        header = await self.command("locks", until=b"LOCKS:\n")
        rest = await self.command("noop", until=b"OK \r\n")
        return parse_ddlockd_locks(header + rest)


# -- judging and the fleet-status task --------------------------------------------------------------

def judge_ddlockd(host: str, reading: "DdlockdStatus | Unavailable") -> Check:
    """Down is CRIT: nothing can take a lock. (It is only ever started, never restarted.)"""
    if isinstance(reading, Unavailable):
        return unreachable("ddlockd", host, reading.reason)
    figures = {"successes": reading.successes, "failures": reading.failures,
               "runtime": reading.runtime, "load": reading.load}
    return Check("ddlockd", host, Verdict.OK,
                 f"up {reading.runtime} s, {reading.successes} locks granted, "
                 f"{reading.failures} refused", figures)


@task(name="check-ddlockd", **READ)
async def check_ddlockd(inventory: Inventory, thresholds: Thresholds) -> list[Check]:
    """Read `status` from every ddlockd of the inventory and judge each. Read-only."""
    service = inventory.service("ddlockd")
    readings = await per_host(service.hosts, lambda h: read_ddlockd_status(
        inventory.host(h).address, service.port or 7002))
    return [judge_ddlockd(h, r) for h, r in readings.items()]


# -- changes ---------------------------------------------------------------------------------------

@task(name="start-ddlockd", cache_policy=NO_CACHE)
async def start_ddlockd(inventory: Inventory, host: str) -> "CommandResult":
    """Start the ddlockd of `host` with its init script over SSH. Changes the host; never retried:
    the flow re-reads the daemon's status and decides."""
    from tasks.ssh import ssh_pool

    async with ssh_pool(inventory) as pool:
        return await pool.run(host, "ddlockd.start")
