"""memcached (pymemcache): read a node's `stats`, judge fill and hit ratio between two samples;
restart a node (over SSH, the inventory's `memcached.restart`).

One `pymemcache.Client` per node (HashClient has no `stats()`), with explicit timeouts: pymemcache
has none by default.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError

from prefect import task
from prefect.cache_policies import NO_CACHE

from dwops.errors import Unavailable
from dwops.health import Check, Thresholds, Verdict, unreachable
from dwops.inventory import Inventory
from tasks.common import READ, per_host

if TYPE_CHECKING:
    from tasks.ssh import CommandResult


class MemcacheUnavailable(Unavailable):
    def __init__(self, address: str, port: int, reason: str):
        super().__init__(f"memcached {address}:{port}", reason)
        self.address, self.port = address, port


@dataclass(frozen=True)
class MemcacheStats:
    pid: int
    uptime: int
    version: str
    curr_connections: int
    curr_items: int
    bytes: int
    limit_maxbytes: int
    evictions: int
    cmd_get: int
    get_hits: int
    get_misses: int

    @property
    def fill_ratio(self) -> float:
        return self.bytes / self.limit_maxbytes if self.limit_maxbytes else 0.0


def parse_memcache_stats(raw: Mapping[bytes | str, object]) -> MemcacheStats:
    """`stats` as pymemcache returns it (bytes keys, numbers converted) into MemcacheStats."""
    s = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}

    def num(name: str) -> int:
        return int(s.get(name, 0))  # type: ignore[call-overload]

    version = s.get("version", "")
    return MemcacheStats(
        pid=num("pid"), uptime=num("uptime"),
        version=version.decode() if isinstance(version, bytes) else str(version),
        curr_connections=num("curr_connections"), curr_items=num("curr_items"),
        bytes=num("bytes"), limit_maxbytes=num("limit_maxbytes"), evictions=num("evictions"),
        cmd_get=num("cmd_get"), get_hits=num("get_hits"), get_misses=num("get_misses"),
    )


def hit_ratio_between(before: MemcacheStats, after: MemcacheStats) -> float | None:
    """Hits / (hits + misses) over the interval between two samples; None if no gets happened
    or the node restarted in between (its counters reset)."""
    if restarted_between(before, after):
        return None
    hits = after.get_hits - before.get_hits
    misses = after.get_misses - before.get_misses
    return hits / (hits + misses) if hits + misses > 0 else None


def restarted_between(before: MemcacheStats, after: MemcacheStats) -> bool:
    """A restart shows as uptime going backwards (or a new pid)."""
    return after.uptime < before.uptime or after.pid != before.pid


def read_memcache_stats(address: str, port: int, timeout: float = 2.0) -> MemcacheStats:
    """Read `stats` from one memcached node. Read-only; safe to retry."""
    client = Client((address, port), connect_timeout=timeout, timeout=timeout)
    try:
        return parse_memcache_stats(client.stats())
    except (OSError, MemcacheError) as e:
        raise MemcacheUnavailable(address, port, f"{type(e).__name__}: {e}") from None
    finally:
        client.close()


# -- judging and the fleet-status task --------------------------------------------------------------

@dataclass(frozen=True)
class MemcacheSamples:
    """Two `stats` samples of one node, `seconds` apart."""

    before: MemcacheStats
    after: MemcacheStats
    seconds: float


async def read_memcache_samples(address: str, port: int, window: float = 1.0,
                                timeout: float = 2.0) -> MemcacheSamples:
    """Two `stats` reads `window` seconds apart. Read-only; safe to retry."""
    before = await asyncio.to_thread(read_memcache_stats, address, port, timeout)
    await asyncio.sleep(window)
    after = await asyncio.to_thread(read_memcache_stats, address, port, timeout)
    return MemcacheSamples(before, after, window)


def judge_memcache(host: str, reading: "MemcacheSamples | Unavailable", t: Thresholds) -> Check:
    """Down is CRIT (every read falls through to the databases). A cold node (recently
    restarted), a low hit ratio over the window, or a nearly full node evicting items is WARN."""
    if isinstance(reading, Unavailable):
        return unreachable("memcached", host, reading.reason)
    a, b = reading.before, reading.after
    ratio = hit_ratio_between(a, b)
    figures = {"uptime": b.uptime, "connections": b.curr_connections, "items": b.curr_items,
               "bytes": b.bytes, "fill_ratio": round(b.fill_ratio, 4), "evictions": b.evictions,
               "hit_ratio": None if ratio is None else round(ratio, 4),
               "gets_per_second": round((b.cmd_get - a.cmd_get) / reading.seconds, 1)
               if not restarted_between(a, b) else None}
    if restarted_between(a, b):
        return Check("memcached", host, Verdict.WARN, "restarted while being read", figures)
    if b.uptime < t.memcache_warm_seconds:
        return Check("memcached", host, Verdict.WARN,
                     f"restarted {b.uptime} s ago: cache still cold", figures)
    if ratio is not None and ratio < t.memcache_hit_ratio_warn:
        return Check("memcached", host, Verdict.WARN, f"hit ratio {ratio:.0%} over the last "
                     f"{reading.seconds:g} s (warn below {t.memcache_hit_ratio_warn:.0%})", figures)
    if b.fill_ratio >= t.memcache_fill_warn and b.evictions > a.evictions:
        return Check("memcached", host, Verdict.WARN,
                     f"{b.fill_ratio:.0%} full and evicting", figures)
    hit = "no gets" if ratio is None else f"hit ratio {ratio:.0%}"
    return Check("memcached", host, Verdict.OK,
                 f"up {b.uptime} s, {b.curr_items} items, {hit}", figures)


@task(name="check-memcached", **READ)
async def check_memcached(inventory: Inventory, thresholds: Thresholds,
                          window: float = 1.0) -> list[Check]:
    """Sample every memcached node twice, `window` s apart, and judge each. Read-only."""
    service = inventory.service("memcached")
    readings = await per_host(service.hosts, lambda h: read_memcache_samples(
        inventory.host(h).address, service.port or 11211, window))
    return [judge_memcache(h, r, thresholds) for h, r in readings.items()]


# -- one node by its inventory name, and the restart -----------------------------------------------

async def read_memcached_node(inventory: Inventory, host: str, timeout: float = 2.0
                              ) -> MemcacheStats:
    """Read `stats` from the memcached of inventory host `host`. Read-only; safe to retry.
    Raises MemcacheUnavailable when it does not answer."""
    port = inventory.service("memcached").port or 11211
    return await asyncio.to_thread(read_memcache_stats, inventory.host(host).address, port, timeout)


async def read_memcached_nodes(inventory: Inventory, hosts: list[str], timeout: float = 2.0
                               ) -> dict[str, MemcacheStats | Unavailable]:
    """`stats` of every given memcached host at once: each host's reading or its Unavailable
    (retried once). Read-only."""
    return await per_host(hosts, lambda h: read_memcached_node(inventory, h, timeout))


@task(name="restart-memcached", cache_policy=NO_CACHE)
async def restart_memcached(inventory: Inventory, host: str, *, timeout: float | None = None
                            ) -> "CommandResult":
    """Restart the memcached of `host` with the inventory's `memcached.restart` command over SSH.
    Changes the host: the node comes back EMPTY, and every read it served falls through to the
    databases until it is warm again. Never retried: the flow re-reads `stats` and decides."""
    from tasks.ssh import ssh_pool

    async with ssh_pool(inventory) as pool:
        return await pool.run(host, "memcached.restart", timeout=timeout)
