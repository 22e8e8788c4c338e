"""SSH to the fleet (asyncssh): run a command the inventory allows, with host keys verified.

The connection contract:
- Host keys are always checked against the inventory's known_hosts; an unknown or changed key is
  refused with `HostKeyRejected`, never accepted.
- Every connection has a connect timeout and every command a run timeout.
- At most `MAX_CONNECTING` connections of a pool are being set up at once (key exchange and
  login cost CPU on both ends): a fan-out to hundreds of hosts would otherwise start every
  handshake together, and each would take as long as all of them, past its connect timeout.
  Waiting for a turn is not counted in a host's connect timeout; commands are not bounded.
- A pool reads the known_hosts file once, at its first connection, and checks every host against
  that (not once per connection: that grew with hosts x lines).
- `SshPool` reuses one connection per host for as long as it is open, and closes them all on exit.
  A flow opens one for its whole run with `ssh_session`; tasks get it through `ssh_pool`.
  Connections never outlive the pool or cross event loops.
- Only commands named in the inventory run (`Inventory.command`), their values shell-quoted.
- `SshUnavailable` marks transient trouble (refused, reset, timed out): safe to retry a read.
  `HostKeyRejected`, `SshAuthFailed` and `SshConfigError` (a known_hosts file that cannot be
  read, checked before any connection) are not transient and never retried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import asyncssh

from prefect import task
from prefect.cache_policies import NO_CACHE

from dwops.errors import Unavailable
from dwops.health import Check, Thresholds, Verdict, unreachable
from dwops.inventory import Inventory
from tasks.common import attempt
from dwops.secrets import read_secret


class SshError(RuntimeError):
    def __init__(self, host: str, message: str):
        self.host = host
        RuntimeError.__init__(self, f"{host}: {message}")


class SshUnavailable(SshError, Unavailable):
    """The host did not answer, refused, or dropped the connection: transient."""

    def __init__(self, host: str, message: str):
        SshError.__init__(self, host, message)
        self.target, self.reason = host, message


class HostKeyRejected(SshError):
    """The host's key is unknown or changed: never connect."""


class SshAuthFailed(SshError):
    """The host refused our key."""


class SshConfigError(SshError):
    """The inventory's SSH settings cannot be used (its known_hosts file cannot be read):
    nothing can connect until an operator fixes it, so it is never retried."""


@dataclass(frozen=True)
class CommandResult:
    host: str
    command: str
    exit_status: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


_RUN_POOL: ContextVar["SshPool | None"] = ContextVar("dwops_ssh_pool", default=None)

# Connection set-ups in flight per pool. Measured on the scaled lab (2 cores, 200-500 hosts):
# unbounded, 500 hosts made 121 of 500 logins miss a 5 s connect timeout; see benchmarks/fanout.py.
MAX_CONNECTING = 32


@asynccontextmanager
async def ssh_session(inventory: Inventory) -> AsyncIterator["SshPool"]:
    """One connection per host for everything run inside (a flow run), closed at the end.

    Tasks find it through `ssh_pool`; no live connection is ever passed as a parameter.
    """
    pool = SshPool(inventory)
    token = _RUN_POOL.set(pool)
    try:
        yield pool
    finally:
        _RUN_POOL.reset(token)
        await pool.close()


@asynccontextmanager
async def ssh_pool(inventory: Inventory) -> AsyncIterator["SshPool"]:
    """The run's pool when there is one for this inventory on this event loop, else a new one
    closed on exit."""
    pool = _RUN_POOL.get()
    if pool is not None and pool.inventory == inventory and pool.loop is asyncio.get_running_loop():
        yield pool
        return
    async with SshPool(inventory) as own:
        yield own


class SshPool:
    """Connections to an inventory's hosts, opened on first use and closed on exit."""

    def __init__(self, inventory: Inventory, *, max_connecting: int = MAX_CONNECTING):
        self.inventory = inventory
        self.max_connecting = max_connecting
        self._connecting: asyncio.Semaphore | None = None
        self._known_hosts: asyncssh.SSHKnownHosts | None = None
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        self._conns: dict[str, asyncssh.SSHClientConnection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._key: asyncssh.SSHKey | None = None

    async def __aenter__(self) -> "SshPool":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.close()
        for conn in conns:
            try:
                await asyncio.wait_for(conn.wait_closed(), 5)
            except (asyncio.TimeoutError, OSError):
                pass

    def _client_key(self) -> asyncssh.SSHKey:
        if self._key is None:
            self._key = asyncssh.import_private_key(read_secret(self.inventory.ssh.client_key))
        return self._key

    def _host_keys(self, host: str) -> asyncssh.SSHKnownHosts:
        """The inventory's known_hosts, read once per pool; SshConfigError if it cannot be read
        (a missing file is the operator's to fix, not a host that is down)."""
        if self._known_hosts is None:
            path = self.inventory.ssh.known_hosts
            try:
                self._known_hosts = asyncssh.read_known_hosts(path)
            except OSError as e:
                raise SshConfigError(host, f"configuration error: cannot read the known_hosts "
                                           f"file {path} (ssh.known_hosts: {e.strerror}); host "
                                           f"keys are always verified, so nothing connects "
                                           f"without it") from None
        return self._known_hosts

    async def connection(self, host: str) -> asyncssh.SSHClientConnection:
        lock = self._locks.setdefault(host, asyncio.Lock())
        async with lock:
            conn = self._conns.get(host)
            if conn is not None and not conn.is_closed():
                return conn
            if self._connecting is None:
                self._connecting = asyncio.Semaphore(self.max_connecting)
            async with self._connecting:
                conn = await self._connect(host)
            self._conns[host] = conn
            return conn

    async def _connect(self, host: str) -> asyncssh.SSHClientConnection:
        address, port, user = self.inventory.ssh_target(host)
        ssh = self.inventory.ssh
        known_hosts = self._host_keys(host)
        try:
            return await asyncssh.connect(
                address, port, username=user,
                client_keys=[self._client_key()],
                known_hosts=known_hosts,
                connect_timeout=ssh.connect_timeout,
                kex_algs=ssh.kex_algorithms,
                agent_path=None, config=[], preferred_auth="publickey",
            )
        except asyncssh.HostKeyNotVerifiable as e:
            raise HostKeyRejected(host, f"host key not verified against {ssh.known_hosts} "
                                        f"({e.reason}); refusing to connect") from None
        except asyncssh.PermissionDenied:
            raise SshAuthFailed(host, f"{user}@{address}:{port} refused our key") from None
        except (OSError, asyncio.TimeoutError, asyncssh.DisconnectError) as e:
            raise SshUnavailable(host, f"cannot connect to {address}:{port}: "
                                       f"{type(e).__name__}: {e}") from None

    async def run(self, host: str, name: str, *, timeout: float | None = None,
                  **values: str | int | float) -> CommandResult:
        """Run the inventory's command `name` on `host`; a non-zero exit is a result, not an error."""
        command = self.inventory.command(host, name, **values)
        timeout = timeout or self.inventory.ssh.command_timeout
        conn = await self.connection(host)
        started = time.monotonic()
        try:
            done = await conn.run(command, check=False, timeout=timeout)
        except asyncssh.TimeoutError:
            raise SshUnavailable(host, f"{name!r} did not finish within {timeout:g} s") from None
        except (OSError, asyncssh.DisconnectError, asyncssh.ChannelOpenError) as e:
            self._conns.pop(host, None)
            raise SshUnavailable(host, f"connection lost running {name!r}: {e}") from None
        return CommandResult(
            host=host, command=command,
            exit_status=done.exit_status if done.exit_status is not None else -1,
            stdout=str(done.stdout or ""), stderr=str(done.stderr or ""),
            seconds=time.monotonic() - started,
        )

    async def run_everywhere(self, hosts: list[str], name: str, *, attempts: int = 1,
                             **values: str | int | float) -> dict[str, CommandResult | SshError]:
        """Run `name` on every host at once; each host's result or error, none hiding another.

        `attempts` > 1 retries a host after `SshUnavailable` only: use it for reads, never for
        a change (a restart is not repeated blindly; the flow re-reads and decides).
        """
        async def one(host: str) -> CommandResult:
            return await attempt(lambda: self.run(host, name, **values), attempts=attempts)

        results = await asyncio.gather(*(one(h) for h in hosts), return_exceptions=True)
        out: dict[str, CommandResult | SshError] = {}
        for host, r in zip(hosts, results):
            if isinstance(r, BaseException) and not isinstance(r, SshError):
                r = SshError(host, f"{type(r).__name__}: {r}")
            out[host] = r  # type: ignore[assignment]
        return out


# -- the fleet-status task ----------------------------------------------------------------------------

def judge_login(host: str, result: "CommandResult | SshError") -> Check:
    """A host we cannot log in to is CRIT: no runbook step can reach it."""
    if isinstance(result, SshError):
        return unreachable("ssh", host, str(result).removeprefix(f"{host}: "))
    if not result.ok or result.stdout.strip() != host.split(".")[0]:
        return Check("ssh", host, Verdict.WARN,
                     f"logged in, but `hostname` said {result.stdout.strip()!r} "
                     f"(exit {result.exit_status})", {"seconds": round(result.seconds, 3)})
    return Check("ssh", host, Verdict.OK, "login ok, host key verified",
                 {"seconds": round(result.seconds, 3)})


@task(name="check-ssh", cache_policy=NO_CACHE)
async def check_ssh(inventory: Inventory, thresholds: Thresholds) -> list[Check]:
    """Log in to every host (host key verified) and run `hostname`. Read-only."""
    async with ssh_pool(inventory) as pool:
        results = await pool.run_everywhere(list(inventory.hosts), "hostname", attempts=2)
    return [judge_login(h, r) for h, r in results.items()]
