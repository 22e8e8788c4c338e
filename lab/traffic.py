"""The lab's user traffic, sent the way the ALB would send it to the webs.

    python -m lab.traffic --config PATH

Every `cfg.workload.target_refresh_seconds` it reads the target group's registered targets from
the AWS stand-in (`elbv2.describe_target_health`, target type `ip`: Id = a web's loopback
address, Port = `cfg.ports.web`). It sends `cfg.workload.traffic_rate` GET requests per second,
round-robin over the routable targets: journal pages of users picked with a Zipf-like popularity
(so a few journals are hot and the cache matters) and some front pages. Each request gets a new
connection (`Connection: close`), a 5 s timeout, and at most `MAX_IN_FLIGHT` are outstanding.

Bounded by construction: it only ever connects to addresses in 127.0.0.0/8 (any other target
is refused and logged), stops by itself after `cfg.workload.traffic_max_seconds`, and stops on
SIGTERM or SIGINT.

A request fails on a connection error, a timeout or a 5xx answer. Every second the counters
are written to `counters/traffic.json` (`write_counters(cfg, "traffic", ...)`), read back with
`read_traffic(cfg)`:

    {
      "pid": 1234, "running": true, "stop_reason": null,
      "started": 1767225600.0, "updated": 1767225612.0, "rate": 20.0,
      "max_seconds": 43200, "deadline": 1767268800.0,
      "totals": {"requests": 240, "failures": 3, "skipped": 0, "in_flight": 1,
                 "last_failure": {"reason": "connection refused", "time": 1767225610.2,
                                  "host": "va-web01", "path": "/~user0003"},
                 "latency_ms": {"p50": 1.9, "p99": 41.0, "samples": 237}},
      "webs": {"va-web01": {"address": "127.10.0.11", "requests": 120, "failures": 3,
                            "last_failure": {...} or null, "last_request": 1767225611.9,
                            "latency_ms": {"p50": ..., "p99": ..., "samples": ...}}, ...},
      "targets": [{"host": "va-web01", "address": "127.10.0.11", "port": 80,
                   "state": "healthy"}, ...],
      "targets_updated": 1767225611.8, "targets_error": null,
      "refused_targets": []
    }

`requests` counts finished requests (answered or failed). `webs` has every web of the config
from the start (zeros until it gets traffic) plus any other address that was targeted.
Latencies are over the last minute, of requests that got an answer (any status). Requests sent
while no target is routable fail with reason "no routable targets" and count in `totals` only.
`skipped` counts requests not sent because `MAX_IN_FLIGHT` were already outstanding.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import configparser
import ipaddress
import itertools
import os
import random
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from lab.config import LabConfig, read_counters, write_counters

SITE_USERS = 2000  # user0001 .. user2000, as seeded by lab/sql/site.sql
ZIPF_EXPONENT = 1.1  # user of popularity rank r is asked for with weight 1 / r**s
JOURNAL_SHARE = 0.80  # /~USER
PROFILE_SHARE = 0.10  # /profile?user=USER; the rest is the front page
REQUEST_TIMEOUT = 5.0
MAX_IN_FLIGHT = 64
LATENCY_WINDOW = 60.0  # seconds of latencies kept for p50/p99
AWS_TIMEOUT = 2.0
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
# What an ALB sends to: healthy targets, or, when none is healthy, every target that is not on
# its way out ("fail open").
NOT_ROUTABLE_STATES = frozenset({"draining", "unused"})

COUNTERS_NAME = "traffic"


# -- pure helpers -------------------------------------------------------------------------------


def username(userid: int) -> str:
    """The name site.sql gives to `userid`: 1 → user0001."""
    return f"user{userid:04d}"


def is_loopback(address: str) -> bool:
    """True only for an IP address inside 127.0.0.0/8 (never a name)."""
    try:
        return ipaddress.ip_address(address) in LOOPBACK
    except ValueError:
        return False


@dataclass(frozen=True)
class Target:
    """One registered target of the target group."""

    address: str
    port: int
    state: str
    host: str  # the lab host at that address, or the address itself


def parse_target_health(reply: dict[str, Any], host_of: dict[str, str]) -> list[Target]:
    """Targets of a `describe_target_health` reply, in the reply's order."""
    targets = []
    for desc in reply.get("TargetHealthDescriptions", []):
        address = desc["Target"]["Id"]
        targets.append(
            Target(
                address=address,
                port=int(desc["Target"].get("Port") or 0),
                state=desc.get("TargetHealth", {}).get("State", "unknown"),
                host=host_of.get(address, address),
            )
        )
    return targets


def routable(targets: list[Target]) -> list[Target]:
    """The targets an ALB would send new requests to (healthy ones, else fail open)."""
    healthy = [t for t in targets if t.state == "healthy"]
    return healthy or [t for t in targets if t.state not in NOT_ROUTABLE_STATES]


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100, nearest rank) of already sorted values, None if empty."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100)
    return sorted_values[int(rank) - 1]


class PathPicker:
    """Request paths with the lab's popularity: mostly journals of a few hot users."""

    def __init__(self, rng: random.Random, users: int = SITE_USERS, s: float = ZIPF_EXPONENT):
        self._rng = rng
        self._cum = list(itertools.accumulate(1.0 / (rank**s) for rank in range(1, users + 1)))

    def user(self) -> str:
        """A user, rank r (userid r) picked with weight 1 / r**s."""
        x = self._rng.random() * self._cum[-1]
        return username(bisect.bisect_left(self._cum, x) + 1)

    def path(self) -> str:
        x = self._rng.random()
        if x < JOURNAL_SHARE:
            return f"/~{self.user()}"
        if x < JOURNAL_SHARE + PROFILE_SHARE:
            return f"/profile?user={self.user()}"
        return "/"


def read_aws_credentials(path: str) -> dict[str, str]:
    """boto3 keyword arguments from the [default] section of an AWS credentials ini file."""
    ini = configparser.ConfigParser()
    if not ini.read(path):
        raise FileNotFoundError(f"{path}: no AWS credentials file")
    section = ini["default"]
    creds = {
        "aws_access_key_id": section["aws_access_key_id"],
        "aws_secret_access_key": section["aws_secret_access_key"],
    }
    if section.get("aws_session_token"):
        creds["aws_session_token"] = section["aws_session_token"]
    return creds


# -- counters -----------------------------------------------------------------------------------


@dataclass
class Stats:
    """Counts and recent latencies of one web (or of all of them)."""

    address: str | None = None
    requests: int = 0
    failures: int = 0
    last_failure: dict[str, Any] | None = None
    last_request: float | None = None
    latencies: deque[tuple[float, float]] = field(default_factory=deque)  # (monotonic, ms)

    def answered(self, ms: float, now: float) -> None:
        self.latencies.append((time.monotonic(), ms))
        self.last_request = now

    def failed(self, reason: str, now: float, host: str | None, path: str) -> None:
        self.failures += 1
        self.last_failure = {"reason": reason, "time": round(now, 3), "host": host, "path": path}
        self.last_request = now

    def snapshot(self) -> dict[str, Any]:
        horizon = time.monotonic() - LATENCY_WINDOW
        while self.latencies and self.latencies[0][0] < horizon:
            self.latencies.popleft()
        values = sorted(ms for _, ms in self.latencies)
        p50, p99 = percentile(values, 50), percentile(values, 99)
        out: dict[str, Any] = {
            "requests": self.requests,
            "failures": self.failures,
            "last_failure": self.last_failure,
            "last_request": round(self.last_request, 3) if self.last_request else None,
            "latency_ms": {
                "p50": round(p50, 1) if p50 is not None else None,
                "p99": round(p99, 1) if p99 is not None else None,
                "samples": len(values),
            },
        }
        if self.address is not None:
            out["address"] = self.address
        return out


def read_traffic(cfg: LabConfig) -> dict[str, Any]:
    """The traffic generator's last counters (see this module's docstring), {} if none yet."""
    return read_counters(cfg, COUNTERS_NAME)


# -- HTTP ---------------------------------------------------------------------------------------


class BadResponse(Exception):
    """The web answered something that is not an HTTP response."""


async def fetch(address: str, port: int, path: str) -> int:
    """GET `path` from address:port on a new connection; the status code once the body is read."""
    reader, writer = await asyncio.open_connection(address, port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {address}:{port}\r\n"
            "User-Agent: dwops-lab-traffic\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        line = await reader.readline()
        if not line:
            raise BadResponse("connection closed without a response")
        parts = line.split()
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise BadResponse(f"bad status line {line[:60]!r}")
        while await reader.read(65536):  # the rest of the response, until the web closes
            pass
        return int(parts[1])
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def failure_reason(exc: BaseException) -> str:
    """A short, stable text for why a request failed."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return f"timeout after {REQUEST_TIMEOUT:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, BadResponse):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


# -- the generator ------------------------------------------------------------------------------


class TrafficGenerator:
    """Sends the lab's user traffic until stopped or out of time, keeping counters."""

    def __init__(self, cfg: LabConfig, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.rate = float(cfg.workload.traffic_rate)
        self.max_seconds = float(cfg.workload.traffic_max_seconds)
        self.picker = PathPicker(rng or random.Random())
        self.host_of = {h.address: h.name for h in cfg.hosts}
        self.totals = Stats()
        self.webs: dict[str, Stats] = {
            h.name: Stats(address=h.address) for h in cfg.hosts_with("web")
        }
        self.skipped = 0
        self.in_flight = 0
        self.targets: list[Target] = []
        self.targets_updated: float | None = None
        self.targets_error: str | None = None
        self.refused: set[str] = set()
        self.started = time.time()
        self.stop_reason: str | None = None
        self._stop = asyncio.Event()
        self._rr = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._elbv2: Any = None

    # logging
    def log(self, message: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        sys.stdout.write(f"{stamp} traffic {message}\n")
        sys.stdout.flush()

    def stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if told to stop meanwhile."""
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=max(0.0, seconds))
            return True
        except asyncio.TimeoutError:
            return False

    # targets
    def _describe_targets(self) -> dict[str, Any]:
        """Blocking: the target group's targets from the AWS stand-in."""
        if self._elbv2 is None:
            import boto3
            from botocore.config import Config

            self._elbv2 = boto3.client(
                "elbv2",
                endpoint_url=self.cfg.aws_endpoint_url,
                region_name=self.cfg.aws.region,
                config=Config(
                    connect_timeout=AWS_TIMEOUT,
                    read_timeout=AWS_TIMEOUT,
                    retries={"max_attempts": 1, "mode": "standard"},
                ),
                **read_aws_credentials(self.cfg.aws.credentials_file),
            )
        return self._elbv2.describe_target_health(TargetGroupArn=self.cfg.aws.target_group_arn)

    async def refresh_targets(self) -> None:
        """Re-read the targets every `target_refresh_seconds`; keep the last list on errors."""
        if not is_loopback(self.cfg.aws.address):
            self.log(f"refusing AWS endpoint {self.cfg.aws.address}: not a loopback address")
            self.stop("AWS endpoint is not a loopback address")
            return
        while not self._stop.is_set():
            try:
                reply = await asyncio.to_thread(self._describe_targets)
                targets = parse_target_health(reply, self.host_of)
                error = None
            except Exception as exc:  # noqa: BLE001 - any AWS error: keep routing as before
                targets, error = self.targets, f"{type(exc).__name__}: {exc}"
            allowed = []
            for t in targets:
                if is_loopback(t.address) and 0 < t.port < 65536:
                    allowed.append(t)
                elif t.address not in self.refused:
                    self.refused.add(t.address)
                    self.log(f"refusing target {t.address}:{t.port}: not a loopback address")
            if [(t.address, t.port, t.state) for t in allowed] != [
                (t.address, t.port, t.state) for t in self.targets
            ]:
                names = ", ".join(f"{t.host}({t.state})" for t in allowed) or "none"
                self.log(f"targets now: {names}")
            if error and error != self.targets_error:
                self.log(f"cannot read targets: {error}")
            self.targets, self.targets_error = allowed, error
            if error is None:
                self.targets_updated = time.time()
            if await self._sleep(self.cfg.workload.target_refresh_seconds):
                return

    # requests
    def _web(self, target: Target) -> Stats:
        if target.host not in self.webs:
            self.webs[target.host] = Stats(address=target.address)
        return self.webs[target.host]

    async def _request(self, target: Target, path: str) -> None:
        web = self._web(target)
        start = time.monotonic()
        try:
            status = await asyncio.wait_for(
                fetch(target.address, target.port, path), REQUEST_TIMEOUT
            )
            reason = f"HTTP {status}" if status >= 500 else None
        except Exception as exc:  # noqa: BLE001 - every error is a failed request
            status, reason = None, failure_reason(exc)
        finally:
            self.in_flight -= 1
        now = time.time()
        for stats in (web, self.totals):
            stats.requests += 1
            if status is not None:
                stats.answered((time.monotonic() - start) * 1000, now)
            if reason is not None:
                stats.failed(reason, now, target.host, path)

    def _send_one(self) -> None:
        path = self.picker.path()
        targets = routable(self.targets)
        if not targets:
            self.totals.requests += 1
            self.totals.failed("no routable targets", time.time(), None, path)
            return
        if self.in_flight >= MAX_IN_FLIGHT:
            self.skipped += 1
            return
        target = targets[self._rr % len(targets)]
        self._rr += 1
        if not is_loopback(target.address):  # never reached: refresh_targets filters them
            return
        self.in_flight += 1
        task = asyncio.create_task(self._request(target, path))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send_requests(self) -> None:
        """Send at `rate` per second; after a stall, carry on without a burst."""
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.rate if self.rate > 0 else float("inf")
        next_at = loop.time()
        while not self._stop.is_set():
            next_at += interval
            now = loop.time()
            if next_at < now - 1.0:
                next_at = now
            if await self._sleep(next_at - now):
                return
            self._send_one()

    # counters
    def counters(self) -> dict[str, Any]:
        totals = self.totals.snapshot()
        totals.update(skipped=self.skipped, in_flight=self.in_flight)
        return {
            "pid": os.getpid(),
            "running": not self._stop.is_set(),
            "stop_reason": self.stop_reason,
            "started": round(self.started, 3),
            "updated": round(time.time(), 3),
            "rate": self.rate,
            "max_seconds": self.max_seconds,
            "deadline": round(self.started + self.max_seconds, 3),
            "totals": totals,
            "webs": {name: s.snapshot() for name, s in self.webs.items()},
            "targets": [
                {"host": t.host, "address": t.address, "port": t.port, "state": t.state}
                for t in self.targets
            ],
            "targets_updated": round(self.targets_updated, 3) if self.targets_updated else None,
            "targets_error": self.targets_error,
            "refused_targets": sorted(self.refused),
        }

    async def report(self) -> None:
        """Write the counters and a summary line every second."""
        last = (0, 0)
        while True:
            stopped = await self._sleep(1.0)
            if time.time() - self.started >= self.max_seconds:
                self.stop(f"ran for traffic_max_seconds={self.max_seconds:g}")
                stopped = True
            data = self.counters()
            write_counters(self.cfg, COUNTERS_NAME, data)
            t = data["totals"]
            sent, failed = t["requests"] - last[0], t["failures"] - last[1]
            last = (t["requests"], t["failures"])
            self.log(
                f"{sent} requests, {failed} failed, {t['in_flight']} in flight, "
                f"p50 {t['latency_ms']['p50']}ms, targets "
                + (",".join(x["host"] for x in data["targets"]) or "none")
            )
            if stopped:
                return

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, f"signal {signal.Signals(sig).name}")
        self.log(
            f"sending {self.rate:g} req/s for at most {self.max_seconds:g}s to the targets of "
            f"{self.cfg.aws.target_group_arn or '(no target group)'}"
        )
        refresher = asyncio.create_task(self.refresh_targets())
        # Wait for the first read of the targets (at most a few seconds) before sending.
        for _ in range(int(2 * AWS_TIMEOUT / 0.05)):
            if self.targets_updated or self.targets_error or self._stop.is_set():
                break
            await asyncio.sleep(0.05)
        sender = asyncio.create_task(self.send_requests())
        await self.report()
        await asyncio.gather(refresher, sender, return_exceptions=True)
        if self._tasks:  # let requests in flight finish (each has its own timeout)
            await asyncio.wait(set(self._tasks), timeout=REQUEST_TIMEOUT + 1)
        data = self.counters()
        write_counters(self.cfg, COUNTERS_NAME, data)
        self.log(f"stopped: {self.stop_reason}; {data['totals']['requests']} requests, "
                 f"{data['totals']['failures']} failed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.traffic", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", required=True, help="the lab's lab.json")
    args = parser.parse_args(argv)
    cfg = LabConfig.load(args.config)
    asyncio.run(TrafficGenerator(cfg).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
