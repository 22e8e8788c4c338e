"""The fleet-wide maintenance lock: one restart of webs, memcached or workers at a time.

A Prefect global concurrency limit (`dwops-maintenance`, limit 1), across every worker. A
maintenance run holds it from before its first read of the fleet (its gates) until its report is
made: its reads, changes and checks afterwards all happen under it, so no two runs read or change
the fleet at the same time, and no run acts on readings another run may be changing. A second
maintenance run is refused at once with a clear error, never queued behind the first. (What a
run does before it asks for the lock, starting its process and publishing its plan, touches no
host: two runs' Prefect Running times may overlap by that much, their hold on the fleet never.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency
from prefect.exceptions import ObjectNotFound

MAINTENANCE_LIMIT = "dwops-maintenance"


class MaintenanceBusy(RuntimeError):
    """Another maintenance run holds the lock: this one changes nothing."""


async def ensure_limit() -> None:
    """Create the limit (1 slot) if the Prefect server does not have it yet."""
    async with get_client() as client:
        try:
            await client.read_global_concurrency_limit_by_name(MAINTENANCE_LIMIT)
        except ObjectNotFound:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=MAINTENANCE_LIMIT, limit=1))


@asynccontextmanager
async def maintenance_window(flow: str) -> AsyncIterator[None]:
    """Hold the maintenance lock for everything inside, or raise MaintenanceBusy at once."""
    await ensure_limit()
    acquired = False
    try:
        # The lease is renewed every 67 s while the run lives; a run killed outright (a worker
        # cancelling it, a crash) frees the lock when its lease ends, within 90 s.
        async with concurrency(MAINTENANCE_LIMIT, occupy=1, strict=True, max_retries=0,
                               lease_duration=90):
            acquired = True
            yield
    except ConcurrencySlotAcquisitionError:
        if acquired:
            raise
        raise MaintenanceBusy(f"{flow} refused: another maintenance run (webs, memcached or "
                              f"workers) holds {MAINTENANCE_LIMIT!r}; nothing was changed") from None
