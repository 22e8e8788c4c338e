"""How every read runs: never cached, retried only on transient errors, fanned out per host."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prefect.cache_policies import NO_CACHE

from dwops.errors import Unavailable

T = TypeVar("T")


def only_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry a task only when it failed with `Unavailable`."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as e:  # noqa: BLE001 - a result that cannot be read is not retried
        exc = e
    return isinstance(exc, Unavailable)


# Options for every read task: a poll must never return a stale cached value.
READ = dict(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1,
            retry_condition_fn=only_transient)


async def attempt(fn: Callable[[], Awaitable[T]], *, attempts: int = 2, delay: float = 0.3) -> T:
    """Await `fn()`, trying again after `delay` s when it raises `Unavailable` (only then)."""
    for i in range(attempts):
        try:
            return await fn()
        except Unavailable:
            if i == attempts - 1:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def per_host(hosts: list[str], read: Callable[[str], Awaitable[T]], *, attempts: int = 2
                   ) -> dict[str, T | Unavailable]:
    """Run `read(host)` for every host at once; each host's result, or its `Unavailable`.

    Every host's answer is collected before anyone judges them: one bad host never hides another.
    Errors other than `Unavailable` are bugs and propagate.
    """
    async def one(host: str) -> T | Unavailable:
        try:
            return await attempt(lambda: read(host), attempts=attempts)
        except Unavailable as e:
            return e

    results = await asyncio.gather(*(one(h) for h in hosts))
    return dict(zip(hosts, results))
