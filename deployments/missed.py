"""Runs missed while no worker was running are cancelled, never run late.

A scheduled run whose time passed while dwops was down (its server up but no worker, or the
server down over a scheduled time and its backlog created on start) would otherwise all start at
once when a worker comes back: a dozen fleet-status runs competing for two cores, and, worse, a
maintenance restart at an hour nobody chose. `dwops up` cancels them, with a message that says
why, before it starts a worker; the next scheduled run happens on time.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelled

MISSED_AFTER = timedelta(minutes=2)


async def cancel_missed_runs(now: datetime | None = None) -> list[str]:
    """Cancel every scheduled run due more than MISSED_AFTER ago; return their names."""
    cutoff = (now or datetime.now(timezone.utc)) - MISSED_AFTER
    cancelled = []
    async with get_client() as client:
        missed = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
            expected_start_time=FlowRunFilterExpectedStartTime(before_=cutoff)))
        for run in missed:
            due = run.expected_start_time.isoformat(timespec="seconds")
            await client.set_flow_run_state(run.id, Cancelled(
                message=f"missed: due {due} while no dwops worker ran; not run late"), force=True)
            cancelled.append(run.name)
    return cancelled
