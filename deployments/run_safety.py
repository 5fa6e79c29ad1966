"""Server-side automations that end what a dead run left behind, whatever killed it.

    python -m deployments.run_safety

creates, or re-creates, two automations (the Prefect server evaluates them, so they work when
the run's own process, and its hooks, are gone):

- **zombie runs**: flow runs send a heartbeat every `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds
  (`deployments.serve` sets it; set it on workers too); a running flow run that misses
  `MISSED_HEARTBEATS` of them is marked Crashed. This is Prefect's own recipe for zombie runs
  ("Detect zombie flows" in Prefect's docs).
- **settle ended runs**: when a `finetune` run reaches any final state, run the
  `settle_ended_runs` deployment: cancel the jobs of a run that did not complete, release the
  budget holds of runs that ended without settling them.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

from prefect.automations import (
    Automation,
    ChangeFlowRunState,
    EventTrigger,
    Posture,
    RunDeployment,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound

from schemas.flows import DeploymentName

HEARTBEAT_SECONDS = 30
"""Heartbeat interval set for served runs (Prefect's minimum is 30 s)."""
MISSED_HEARTBEATS = 3
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"

ZOMBIE_AUTOMATION = "lmft: crash zombie flow runs"
SETTLE_AUTOMATION = "lmft: settle ended finetune runs"
FINAL_EVENTS = {
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Crashed",
}


def enable_heartbeats(seconds: int = HEARTBEAT_SECONDS) -> int:
    """Make the flow runs this process starts send heartbeats (unless already configured)."""
    os.environ.setdefault(HEARTBEAT_ENV, str(seconds))
    return int(os.environ[HEARTBEAT_ENV])


def zombie_automation(heartbeat_seconds: int = HEARTBEAT_SECONDS) -> Automation:
    """Crash a flow run whose heartbeats stopped without a final state (or a suspension)."""
    return Automation(
        name=ZOMBIE_AUTOMATION,
        description=(
            f"A flow run that sent a heartbeat and then nothing for {MISSED_HEARTBEATS} heartbeat "
            "intervals lost its process: mark it Crashed (the settle automation then cleans up)."
        ),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Suspended",  # a suspended run has no process, by design
                *FINAL_EVENTS,
            },
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=heartbeat_seconds * MISSED_HEARTBEATS),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=(
                    f"no heartbeat for {heartbeat_seconds * MISSED_HEARTBEATS} s: the process "
                    "running this flow run is gone (marked by the zombie automation)"
                ),
            )
        ],
    )


def settle_automation(settle_deployment_id) -> Automation:
    """Run `settle_ended_runs` for every `finetune` run that reaches a final state."""
    return Automation(
        name=SETTLE_AUTOMATION,
        description="Cancel the jobs and release the budget holds that an ended finetune run left.",
        trigger=EventTrigger(
            expect=FINAL_EVENTS,
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={
                "prefect.resource.role": "flow",
                "prefect.resource.name": DeploymentName.FINETUNE.flow_name,
            },
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=settle_deployment_id,
                parameters={"flow_run_id": "{{ flow_run.id }}"},
            )
        ],
    )


def _replace(automation: Automation) -> Automation:
    while True:
        try:
            Automation.read(name=automation.name).delete()
        except ValueError:  # none left with this name
            break
    return automation.create()


def ensure_run_safety_automations(heartbeat_seconds: int = HEARTBEAT_SECONDS) -> list[Automation]:
    """(Re)create the zombie automation, and the settle automation when its deployment exists."""
    created = [_replace(zombie_automation(heartbeat_seconds))]
    with get_client(sync_client=True) as client:
        try:
            settle = client.read_deployment_by_name(DeploymentName.SETTLE_ENDED_RUNS.value)
        except ObjectNotFound:  # not deployed on this server
            settle = None
    if settle is not None:
        created.append(_replace(settle_automation(settle.id)))
    return created


def main() -> int:
    for automation in ensure_run_safety_automations(
        int(os.environ.get(HEARTBEAT_ENV) or HEARTBEAT_SECONDS)
    ):
        print(f"automation {automation.name!r} ({automation.id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
