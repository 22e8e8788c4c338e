"""memcached (pymemcache): read a node's `stats`, judge fill and hit ratio between two samples.

One `pymemcache.Client` per node (HashClient has no `stats()`), with explicit timeouts: pymemcache
has none by default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError


class MemcacheUnavailable(RuntimeError):
    def __init__(self, address: str, port: int, reason: str):
        self.address, self.port, self.reason = address, port, reason
        super().__init__(f"memcached {address}:{port} unavailable: {reason}")


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
