"""Answering a run that `dwops run` started in the background once it pauses for approval,
straight through Prefect's API (as nobody the proxy knows): shared by the flow tests."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any


async def answer_when_paused(api: str, proc: subprocess.Popen, flow: str, approve: bool) -> Any:
    """Wait until the background run of `flow` is Paused, then answer it straight through
    Prefect's API (as nobody the proxy knows)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter,
                                                FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}):
        async with get_client() as client:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, f"the run ended before pausing: {proc.communicate()}"
                paused = await client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])),
                    flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
                if paused:
                    break
                assert time.monotonic() < deadline, f"the {flow} run never paused"
                await asyncio.sleep(0.5)
            deadline = time.monotonic() + 15
            while True:  # the form's schema is saved just after the pause
                result = await client.resume_flow_run(paused[0].id,
                                                      run_input={"approve": approve})
                if result.status.value == "ACCEPT" or time.monotonic() > deadline:
                    return paused[0]
                await asyncio.sleep(0.5)
