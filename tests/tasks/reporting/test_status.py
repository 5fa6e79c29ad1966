"""A run's status: one artifact rewritten in place, one `lmft.finetune.*` event per change, the
final stage written by the run's hooks; nothing to publish outside a run."""

from __future__ import annotations

import time
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.runtime import flow_run

from schemas.costs import CostEstimate
from schemas.request import Backend
from schemas.status import STATUS_ARTIFACT_KEY, GateDecision, RunStatus, Stage
from tasks.reporting.status import (
    end_status,
    publish_cost,
    publish_estimate,
    publish_evaluation,
    publish_gate,
    publish_links,
    publish_stage,
    publish_training,
    stage,
)

ESTIMATE = CostEstimate(
    backend=Backend.HF_JOBS,
    hardware="a10g-small",
    price_per_hour=1.0,
    low_usd=0.5,
    expected_usd=1.0,
    high_usd=2.0,
    source="test",
)


@flow(name="status-probe", on_completion=[end_status], on_failure=[end_status])
def status_probe(fail: bool = False) -> str:
    with stage(Stage.VALIDATING):
        pass
    publish_estimate(ESTIMATE)
    publish_gate(GateDecision.AWAITING_APPROVAL, reserved_usd=2.0, timeout_seconds=60)
    publish_gate(GateDecision.APPROVED, approver="ana", note="fits")
    publish_stage(Stage.TRAINING)
    publish_training(job_id="local-1", step=1, total_steps=4, loss=2.5)
    publish_evaluation(0, 3.0)  # the base model
    publish_evaluation(1, 2.75, 3.0)
    publish_training(step=2, eta_seconds=3.0)
    publish_cost(0.25)
    publish_links(hf_job="https://hf.example/jobs/me/1", trackio=None)
    if fail:
        raise RuntimeError("the probe was told to fail")
    return str(flow_run.id)


def artifacts_of(run_id: UUID) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )


def test_the_run_publishes_one_status_artifact_and_an_event_per_change(prefect_server):
    run_id = UUID(status_probe())

    (artifact,) = [a for a in artifacts_of(run_id) if a.key == STATUS_ARTIFACT_KEY]
    status = RunStatus.model_validate(artifact.data)
    assert status.flow_run_id == str(run_id) and status.flow == "status-probe"
    assert status.stage is Stage.COMPLETED and status.message is None
    assert status.gate.decision is GateDecision.APPROVED and status.gate.approver == "ana"
    assert status.gate.estimate == ESTIMATE and status.gate.reserved_usd == 2.0
    training = status.training
    assert (training.job_id, training.step, training.total_steps) == ("local-1", 2, 4)
    assert (training.loss, training.eval_loss, training.eta_seconds) == (2.5, 2.75, 3.0)
    assert (training.base_eval_loss, training.best_step, training.best_eval_loss) == (3.0, 1, 2.75)
    assert status.cost_so_far_usd == 0.25
    assert status.links.hf_job == "https://hf.example/jobs/me/1" and status.links.trackio is None
    assert set(status.step_seconds) == {"validate"}
    assert "approved by ana" in artifact.description and "step 2/4" in artifact.description

    resource = EventResourceFilter(id=[f"prefect.flow-run.{run_id}"])
    names: list[str] = []
    deadline = time.monotonic() + 60  # the server persists events in batches
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            page = client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(prefix=["lmft.finetune."]), resource=resource
                ),
                limit=50,
            )
        names = sorted({event.event for event in page.events})
        if len(names) == 5:
            break
        time.sleep(1)
    assert names == [
        f"lmft.finetune.{part}" for part in ("cost", "gate", "links", "progress", "stage")
    ]
    gates = [e for e in page.events if e.event == "lmft.finetune.gate"]
    assert {e.payload["gate"]["decision"] for e in gates} >= {"awaiting_approval", "approved"}


def test_a_failed_run_ends_its_status_failed_with_the_reason(prefect_server):
    state = status_probe(fail=True, return_state=True)

    run_id = state.state_details.flow_run_id
    (artifact,) = [a for a in artifacts_of(run_id) if a.key == STATUS_ARTIFACT_KEY]
    status = RunStatus.model_validate(artifact.data)
    assert status.stage is Stage.FAILED and "told to fail" in status.message
    assert status.cost_so_far_usd == 0.25  # what was published before stays


def test_outside_a_run_there_is_nothing_to_publish():
    publish_stage(Stage.TRAINING)
    publish_training(step=1, total_steps=2)
    with pytest.raises(RuntimeError, match="inside"):
        from tasks.reporting.status import current_status

        current_status()
