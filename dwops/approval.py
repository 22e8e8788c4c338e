"""Emergency paths need a human's explicit approval.

An emergency run (workers restarted during an import, every web at once) either carries the
caller's explicit approval (the CLI's `--approve`, which sets `emergency_approved`), or pauses in
Prefect until someone approves or rejects it in the UI, by REST, or with `dwops approve RUN`. The
form shows exactly what would be lost. No answer within the timeout is a rejection.
"""

from __future__ import annotations

from typing import Any

from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field


class EmergencyApproval(RunInput):
    """The form shown in the Prefect UI when an emergency run waits for approval."""

    approve: bool = Field(False, description="approve the emergency path: what it will lose is "
                                             "described above")
    approver: str = Field("", max_length=100, description="who approves (for the report)")


async def emergency_approved(what_is_lost: str, *, given_by_caller: bool, log: Any,
                             timeout: int = 900) -> tuple[bool, str]:
    """Whether the emergency path may go ahead, and who said so (or why not)."""
    if given_by_caller:
        log.warning("emergency approved by the caller: %s", what_is_lost)
        return True, "approved by the caller (--approve)"
    log.warning("emergency run waiting for approval (%s s): %s", timeout, what_is_lost)
    try:
        answer = await pause_flow_run(
            wait_for_input=EmergencyApproval.with_initial_data(
                description=f"**Emergency run: approve only if this loss is acceptable.**\n\n"
                            f"{what_is_lost}", approve=False),
            timeout=timeout, poll_interval=2)
    except Exception as e:  # a timeout (or a rejection by the API) changes nothing
        log.error("no approval: %s", e)
        return False, f"not approved ({type(e).__name__})"
    if answer.approve:
        who = answer.approver or "someone"
        log.warning("emergency approved by %s", who)
        return True, f"approved by {who}"
    return False, f"rejected by {answer.approver or 'someone'}"
