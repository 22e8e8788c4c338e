"""The webs over HTTP (httpx): the only module that talks HTTP to them.

Dreamwidth's `/admin/healthy` (`DW::Controller::Admin::StatusCheck`) answers plain text:

    status=ok\\n                          everything answered; may be followed by the okay list
    status=fail\\n\\nfailures:\\n  ITEM\\n...  then \\nokay:\\n  ITEM\\n... for what did answer

Items read `global writer`, `memcache HOST:PORT`, `gearman HOST:PORT`, `schwartz N` (with
` unreachable` or ` test query failed` when that is how it failed). dw-ops' restart script judged a
web by `grep status=ok`; we parse the whole page so that a failure names what failed.

`/admin/inflight` (the lab's web answers it; a plain integer) counts requests accepted and not yet
answered, for drain checks.

Every request has a timeout covering connect, write, read and pool waits. Proxies from the
environment are ignored (`trust_env=False`): the webs are reached directly, never through a proxy.
A refused, reset or timed-out request raises `WebUnavailable` (transient, safe to retry a read); a
reply that is not what the page prints raises `WebBadReply`.

For restart-webs, a web's process is read and restarted over SSH (`read_web_process`,
`restart_web`) with the inventory's `web.status` and `web.restart` commands, through tasks.ssh.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from dwops.errors import Unavailable
from dwops.health import Check, Thresholds, Verdict, unreachable
from dwops.inventory import Inventory
from tasks.common import READ, attempt

if TYPE_CHECKING:
    from tasks.ssh import CommandResult

DEFAULT_HEALTH_PATH = "/admin/healthy"
DEFAULT_INFLIGHT_PATH = "/admin/inflight"


class WebUnavailable(Unavailable):
    """A web did not answer (refused, reset, timed out): transient."""

    def __init__(self, address: str, port: int, reason: str) -> None:
        super().__init__(f"web {address}:{port}", reason)
        self.address = address
        self.port = port


class WebBadReply(ValueError):
    """A web answered, but not with what the page prints (another server, an error page)."""

    def __init__(self, address: str, port: int, path: str, status_code: int, problem: str) -> None:
        super().__init__(f"web {address}:{port}{path}: HTTP {status_code}: {problem}")
        self.status_code = status_code
        self.problem = problem


@dataclass(frozen=True)
class Healthy:
    """What `/admin/healthy` said: ok or not, the items that failed and those that answered."""

    ok: bool
    failures: tuple[str, ...] = ()
    okay: tuple[str, ...] = ()


@dataclass(frozen=True)
class HealthReading:
    """One read of `/admin/healthy`: the page, how long it took, the HTTP status."""

    healthy: Healthy
    seconds: float
    status_code: int


# -- pure functions -------------------------------------------------------------------------------


def _first_line(body: str) -> str:
    line = body.splitlines()[0] if body.strip() else ""
    return repr(line[:200]) if line else "(empty reply)"


def parse_healthy(body: str) -> Healthy:
    """`/admin/healthy`'s text as Healthy; anything else raises ValueError with its first line.

    The first line is `status=ok` or `status=fail`; then optional sections `failures:` and
    `okay:`, each followed by two-space-indented items; blank lines separate them. `status=fail`
    needs at least one failure and `status=ok` none.
    """
    lines = body.splitlines()
    if not lines or lines[0].strip() not in ("status=ok", "status=fail"):
        raise ValueError(f"not a /admin/healthy page: first line {_first_line(body)}")
    ok = lines[0].strip() == "status=ok"
    sections: dict[str, list[str]] = {"failures": [], "okay": []}
    current: list[str] | None = None
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        if line.startswith((" ", "\t")):
            if current is None:
                raise ValueError(f"/admin/healthy line {n} {line!r} is outside any section"
                                 f" (first line {_first_line(body)})")
            current.append(line.strip())
        elif line.rstrip().endswith(":") and line.rstrip()[:-1] in sections:
            current = sections[line.rstrip()[:-1]]
        else:
            raise ValueError(f"/admin/healthy line {n} {line!r} is not a section or an item"
                             f" (first line {_first_line(body)})")
    failures, okay = tuple(sections["failures"]), tuple(sections["okay"])
    if ok and failures:
        raise ValueError(f"/admin/healthy says status=ok but lists failures: {', '.join(failures)}")
    if not ok and not failures:
        raise ValueError("/admin/healthy says status=fail but lists no failures")
    return Healthy(ok, failures, okay)


def parse_inflight(body: str) -> int:
    """`/admin/inflight`: one non-negative integer."""
    text = body.strip()
    if not text.isdigit():
        raise ValueError(f"not an /admin/inflight count: first line {_first_line(body)}")
    return int(text)


def judge_web(host: str, reading: HealthReading | Unavailable | WebBadReply,
              thresholds: Thresholds) -> Check:
    """ok → OK (WARN when slower than web_slow_seconds); fail → CRIT naming what failed;
    unreachable or an unexpected reply → CRIT."""
    if isinstance(reading, Unavailable):
        return unreachable("web", host, reading.reason)
    if isinstance(reading, WebBadReply):
        return Check("web", host, Verdict.CRIT,
                     f"unexpected reply: HTTP {reading.status_code}: {reading.problem}",
                     {"reachable": True, "status_code": reading.status_code})
    h = reading.healthy
    figures = {"seconds": round(reading.seconds, 3), "status_code": reading.status_code,
               "failures": list(h.failures), "okay": len(h.okay)}
    if not h.ok:
        return Check("web", host, Verdict.CRIT, "status=fail: " + ", ".join(h.failures), figures)
    if reading.seconds > thresholds.web_slow_seconds:
        return Check("web", host, Verdict.WARN,
                     f"status=ok but slow: {reading.seconds:.2f} s"
                     f" (warn over {thresholds.web_slow_seconds:g} s)", figures)
    return Check("web", host, Verdict.OK,
                 f"status=ok in {reading.seconds:.2f} s ({len(h.okay)} checks okay)", figures)


# -- reads ----------------------------------------------------------------------------------------


def _client(timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout), trust_env=False,
                             follow_redirects=False)


def _transport_reason(e: httpx.TransportError) -> str:
    """httpx's error, with the socket error under it ("Connection refused") when there is one."""
    inner: BaseException | None = e
    while inner is not None:
        if isinstance(inner, OSError) and inner.errno:
            return f"{type(e).__name__}: {os.strerror(inner.errno)}"
        inner = inner.__cause__ or inner.__context__
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


async def _get(address: str, port: int, path: str, timeout: float,
               client: httpx.AsyncClient | None) -> tuple[httpx.Response, float]:
    url = f"http://{address}:{port}{path}"
    own = client is None
    client = client or _client(timeout)
    started = time.monotonic()
    try:
        response = await client.get(url, timeout=timeout)
    except httpx.TimeoutException:
        reason = f"no reply to GET {path} within {timeout:g} s"
        raise WebUnavailable(address, port, reason) from None
    except httpx.TransportError as e:
        raise WebUnavailable(address, port, f"GET {path}: {_transport_reason(e)}") from None
    finally:
        if own:
            await client.aclose()
    return response, time.monotonic() - started


async def read_healthy(address: str, port: int, path: str = DEFAULT_HEALTH_PATH,
                       timeout: float = 3.0, *, client: httpx.AsyncClient | None = None
                       ) -> HealthReading:
    """GET a web's `/admin/healthy` and parse it. Read-only; safe to retry.

    The page answers HTTP 200 whether ok or not; another status with a page that parses is
    still read (the status is in the reading), one that does not parse raises WebBadReply.
    """
    response, seconds = await _get(address, port, path, timeout, client)
    try:
        healthy = parse_healthy(response.text)
    except ValueError as e:
        raise WebBadReply(address, port, path, response.status_code, str(e)) from None
    return HealthReading(healthy, seconds, response.status_code)


async def read_inflight(address: str, port: int, path: str = DEFAULT_INFLIGHT_PATH,
                        timeout: float = 3.0, *, client: httpx.AsyncClient | None = None) -> int:
    """GET a web's `/admin/inflight`: requests accepted and not yet answered (this one left
    out). Read-only; safe to retry."""
    response, _ = await _get(address, port, path, timeout, client)
    if response.status_code != 200:
        raise WebBadReply(address, port, path, response.status_code, _first_line(response.text))
    try:
        return parse_inflight(response.text)
    except ValueError as e:
        raise WebBadReply(address, port, path, response.status_code, str(e)) from None


# -- the fleet-status task ------------------------------------------------------------------------


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger, or this module's outside a flow or task run (a test calling `.fn`)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


@task(name="check-webs", **READ)
async def check_webs(inventory: Inventory, thresholds: Thresholds,
                     timeout: float = 3.0) -> list[Check]:
    """Read every web's `/admin/healthy` at once and judge each. Read-only.

    One Check per web host, in inventory order; a web that does not answer is a CRIT line.
    """
    service = inventory.service("web")
    port = service.port or 80
    path = service.health_path or DEFAULT_HEALTH_PATH

    async with _client(timeout) as client:
        async def one(host: str) -> HealthReading | Unavailable | WebBadReply:
            address = inventory.host(host).address
            try:
                return await attempt(lambda: read_healthy(address, port, path, timeout,
                                                          client=client))
            except (Unavailable, WebBadReply) as e:
                return e

        readings = await asyncio.gather(*(one(h) for h in service.hosts))

    checks = [judge_web(h, r, thresholds) for h, r in zip(service.hosts, readings)]
    log = _logger()
    for c in checks:
        log.info("%s %s %s: %s", c.system, c.host, c.verdict.value, c.reason)
    return checks


# -- restart-webs: a web's process over SSH, and its restart ----------------------------------------
#
# The inventory's `web.status` (an init script's `status`) and `web.restart` (dw-ops'
# `bin/bounce-apache`) run over SSH (tasks.ssh); nothing else reaches a web's shell.


@dataclass(frozen=True)
class WebProcess:
    """What a web's init script `status` said: running or not, and its pid when it names one."""

    running: bool
    pid: int | None
    text: str


_PID_RE = re.compile(r"\bpid\s+(\d+)\b", re.IGNORECASE)


def parse_init_status(exit_status: int, output: str) -> WebProcess:
    """An init script's `status` (LSB: exit 0 running, 3 not running; other codes unknown, read
    as not running) as WebProcess. The pid is read from `pid N` in the output when present (the
    lab's script and many distributions' print it; Debian's apache2 script does not: None)."""
    text = " ".join(output.split())[:200]
    found = _PID_RE.search(output)
    return WebProcess(exit_status == 0, int(found.group(1)) if found and exit_status == 0 else None,
                      text)


async def read_web_process(inventory: Inventory, host: str) -> WebProcess:
    """Run the web's `web.status` over SSH and parse it. Read-only; safe to retry (raises
    tasks.ssh.SshUnavailable when the host cannot be reached)."""
    from tasks.ssh import ssh_pool

    async with ssh_pool(inventory) as pool:
        result = await pool.run(host, "web.status", timeout=30)
    return parse_init_status(result.exit_status, result.stdout + result.stderr)


@task(name="restart-web", cache_policy=NO_CACHE)
async def restart_web(inventory: Inventory, host: str) -> "CommandResult":
    """Restart one web with the inventory's `web.restart` (dw-ops' `bin/bounce-apache`) over SSH.
    Changes the host: its requests in progress are cut off unless it was drained first. Never
    retried: the flow reads `/admin/healthy` afterwards and decides. A non-zero exit is a result;
    an unreachable host raises tasks.ssh.SshUnavailable (the command did not run, or its end is
    unknown)."""
    from tasks.ssh import ssh_pool

    async with ssh_pool(inventory) as pool:
        return await pool.run(host, "web.restart")
