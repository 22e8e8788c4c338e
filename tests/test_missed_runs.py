"""Scheduled runs missed while no worker ran are cancelled by `dwops up`, never run late."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone


def test_only_runs_due_before_the_grace_period_are_cancelled(prefect_api: str):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Scheduled

    from deployments.missed import MISSED_AFTER, cancel_missed_runs

    @flow(name="dwops-missed-runs-probe")
    def probe() -> None:
        pass

    now = datetime.now(timezone.utc)

    async def go():
        with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
            async with get_client() as client:
                return await _go(client)

    async def _go(client):
        made = {}
        for label, when in (("missed", now - MISSED_AFTER - timedelta(hours=3)),
                            ("just-late", now - MISSED_AFTER / 2),
                            ("future", now + timedelta(minutes=10))):
            run = await client.create_flow_run(probe, name=f"probe-{label}",
                                               state=Scheduled(scheduled_time=when))
            made[label] = run.id
        cancelled = await cancel_missed_runs(now)
        states = {label: (await client.read_flow_run(i)).state for label, i in made.items()}
        for i in made.values():  # leave nothing scheduled on the session's server
            await client.delete_flow_run(i)
        return cancelled, states

    cancelled, states = asyncio.run(go())
    assert "probe-missed" in cancelled
    assert not {"probe-just-late", "probe-future"} & set(cancelled)
    assert states["missed"].type.value == "CANCELLED"
    assert "while no dwops worker ran; not run late" in states["missed"].message
    assert states["just-late"].type.value == "SCHEDULED"
    assert states["future"].type.value == "SCHEDULED"
