"""Self-healing, as the notes ask of gearman ("if this goes down, it should be started back up").

fleet-status emits `dwops.service.down` for every gearman or ddlockd it cannot reach (resource id
`dwops.service.<system>.<host>`). One automation per daemon runs the matching ensure-* deployment,
which starts only what is down and never restarts a running daemon. Rate limit: an automation
fires at most once per `COOLDOWN_SECONDS` window (`within`), and its deployment refuses a second
concurrent run (CANCEL_NEW), so a flapping daemon cannot cause a restart storm.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.automations import Automation, EventTrigger, Posture, RunDeployment
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.events import ResourceSpecification

COOLDOWN_SECONDS = 300
# Runs send a heartbeat every HEARTBEAT_SECONDS (the worker's PREFECT_FLOWS_HEARTBEAT_FREQUENCY);
# a run that misses them for ZOMBIE_SECONDS died with its worker or host: it is marked Crashed.
HEARTBEAT_SECONDS = 30
ZOMBIE_SECONDS = 90
ZOMBIES = "dwops: mark runs whose process died as crashed"
HEALS = {"gearman": "ensure-gearman", "ddlockd": "ensure-ddlockd"}


def automation_name(system: str) -> str:
    return f"dwops: start {system} when fleet-status finds it down"


async def ensure_automations(inventory: str = "lab") -> list[str]:
    """Create (or replace) one automation per self-healed daemon; return their names."""
    names = []
    async with get_client() as client:
        for system, deployment_name in HEALS.items():
            deployment = await client.read_deployment_by_name(f"{deployment_name}/{deployment_name}")
            name = automation_name(system)
            for old in await client.read_automations_by_name(name):
                await client.delete_automation(old.id)
            automation = Automation(
                name=name,
                description=f"fleet-status found {system} unreachable: run {deployment_name} "
                            f"(at most once per {COOLDOWN_SECONDS} s)",
                trigger=EventTrigger(
                    expect={"dwops.service.down"},
                    match={"prefect.resource.id": f"dwops.service.{system}.*"},
                    posture=Posture.Reactive, threshold=1, within=COOLDOWN_SECONDS),
                actions=[RunDeployment(source="selected", deployment_id=deployment.id,
                                       parameters={"params": {"inventory": inventory}})],
            )
            await automation.acreate()
            names.append(name)
        for old in await client.read_automations_by_name(ZOMBIES):
            await client.delete_automation(old.id)
        await zombie_automation().acreate()
        names.append(ZOMBIES)
    return names


def zombie_automation() -> Automation:
    """A run whose heartbeats stop (its worker or host died mid-roll) is marked Crashed, so the
    UI, `dwops history` and the next run see that it did not finish (Prefect's recipe for
    zombie flow runs)."""
    return Automation(
        name=ZOMBIES,
        description=f"no heartbeat for {ZOMBIE_SECONDS} s: the run's process is gone",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                    "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                    "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive, threshold=1, within=timedelta(seconds=ZOMBIE_SECONDS)),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"no heartbeat for {ZOMBIE_SECONDS} s: the worker or the run's process died; "
                    f"what it had done is in the lab, not in a report: check fleet-status")],
    )
