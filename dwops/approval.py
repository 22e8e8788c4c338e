"""Emergency paths need a human's approval, and no parameter can stand in for it.

Two ways, and only two, to approve:
- At the operator's own terminal: `dwops run ... --approve` runs the flow in that process, with no
  deployment, and tells it here (`approve_at_this_terminal`). Nothing a run created through a
  deployment (UI, schedule, automation, API) carries can reach this: it is neither a parameter,
  nor an environment variable, nor anything stored in Prefect.
- Through the proxy: the run pauses in Prefect until an operator account answers (the UI's form,
  `dwops approve RUN`, or a REST resume). The gateway records who answered as a tag on the run
  (`approved-by:NAME` / `rejected-by:NAME`), from the account the proxy authenticated. The flow
  goes ahead only if the answer is an approval AND that tag names who gave it: an answer that did
  not come through the proxy (a run input written beforehand, a state forced to RUNNING) is
  refused.
No answer within the timeout is a rejection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from dwops.policy import APPROVED_BY, REJECTED_BY

_approved_at_this_terminal: str | None = None


def approve_at_this_terminal(who: str) -> None:
    """`dwops run --approve`: the person at this terminal approves the emergency paths of the
    flows this process runs itself (never a deployment's run)."""
    global _approved_at_this_terminal
    _approved_at_this_terminal = who or "the operator"


class EmergencyApproval(RunInput):
    """The form shown in the Prefect UI when an emergency run waits for approval. Who answers is
    taken from the account signed in, not from the form."""

    approve: bool = Field(False, description="approve the emergency path: what it will lose is "
                                             "described above")


@dataclass(frozen=True)
class Decision:
    approved: bool
    reason: str  # "approved by alice", "rejected by bob", "not approved (...)"
    by: str | None = None  # the account (or the terminal's user) who decided


async def decide_emergency(what_is_lost: str, *, log: Any, timeout: int = 900) -> Decision:
    """Whether the emergency path may go ahead: a human's decision, or a refusal."""
    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx else None
    if run is not None and run.deployment_id is None and _approved_at_this_terminal:
        who = _approved_at_this_terminal
        log.warning("emergency approved at the terminal by %s: %s", who, what_is_lost)
        return Decision(True, f"approved by {who} at the terminal (dwops run --approve)", who)
    log.warning("emergency run waiting for an operator's approval (%s s): %s", timeout,
                what_is_lost)
    try:
        answer = await pause_flow_run(
            wait_for_input=EmergencyApproval.with_initial_data(
                description=f"**Emergency run: approve only if this loss is acceptable.**\n\n"
                            f"{what_is_lost}", approve=False),
            timeout=timeout, poll_interval=2)
    except Exception as e:  # a timeout (or a rejection by the API) changes nothing
        log.error("no approval: %s", e)
        return Decision(False, f"not approved ({type(e).__name__})")
    approver, rejecter = await _recorded_decision(run.id) if run else (None, None)
    if answer.approve and approver:
        log.warning("emergency approved by %s", approver)
        return Decision(True, f"approved by {approver}", approver)
    if answer.approve:
        log.error("the run was resumed with an approval that no operator gave through the "
                  "proxy: refused")
        return Decision(False, "not approved: the approval did not come from an operator "
                               "account through the proxy")
    return Decision(False, f"rejected by {rejecter or 'an unrecorded caller'}", rejecter)


async def _recorded_decision(run_id) -> tuple[str | None, str | None]:
    """(approver, rejecter) as the gateway recorded them on the run's tags."""
    async with get_client() as client:
        tags = (await client.read_flow_run(run_id)).tags
    approver = next((t[len(APPROVED_BY):] for t in tags if t.startswith(APPROVED_BY)), None)
    rejecter = next((t[len(REJECTED_BY):] for t in tags if t.startswith(REJECTED_BY)), None)
    return approver, rejecter
