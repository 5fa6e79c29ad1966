"""Tools that start flow runs: quick ones waited for (validate, estimate, cost report, models), a
fine-tuning job waited for up to its budget gate, long ones returned at once (convert, deploy)."""

from __future__ import annotations

import json
from typing import Any, NamedTuple
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import Artifact, FlowRun
from prefect.client.schemas.sorting import ArtifactSort
from pydantic import BaseModel

from mcp_adapter.models import (
    ArtifactView,
    CostsResult,
    EstimateResult,
    FlowRunRef,
    GateStatus,
    JobCreated,
    ModelsResult,
    RunStarted,
    RunState,
    ValidationResult,
)
from mcp_adapter.runs import (
    ExpectedFailure,
    ReportProgress,
    new_key,
    read_status,
    returns_error,
    run_ref,
    run_result,
    start_run,
    wait_for_run,
)
from mcp_adapter.status import gate_of
from schemas.costs import CostEstimate
from schemas.flows import DeploymentName
from schemas.registry import ModelRegistryView
from schemas.request import FineTuneRequest
from schemas.validation import ValidationReport


class QuickRun(NamedTuple):
    """A quick flow run as its tool reports it: finished or not, its result or the error."""

    ref: FlowRunRef
    key: str
    finished: bool
    value: Any = None
    error: str | None = None

    def fields(self) -> dict[str, Any]:
        """What every quick tool's result reports about its run."""
        return {
            "run": self.ref,
            "idempotency_key": self.key,
            "finished": self.finished,
            "error": self.error,
        }


async def run_quick_flow(
    deployment: DeploymentName,
    parameters: dict[str, Any],
    returns: type[BaseModel] | None,
    *,
    idempotency_key: str | None,
    wait_seconds: float,
    report_progress: ReportProgress | None,
) -> QuickRun:
    """Start a run of a quick flow, wait at most `wait_seconds`, read its `returns` result."""
    key = new_key(idempotency_key)
    run = await start_run(deployment, parameters, idempotency_key=key)
    async with get_client() as client:
        run = await wait_for_run(client, run, seconds=wait_seconds, report_progress=report_progress)
    ref = run_ref(run, deployment.flow_name)
    if not ref.is_final:
        still = (
            f"flow run {ref.name} was still {ref.state_name} after {wait_seconds:g} s; "
            f"call again with idempotency_key={key!r} to pick up the same run"
        )
        return QuickRun(ref, key, finished=False, error=still)
    if ref.state is not RunState.COMPLETED:
        ended = f"flow run {ref.name} ended {ref.state_name}: {ref.state_message or 'no message'} (see {ref.ui_url})"
        return QuickRun(ref, key, finished=True, error=ended)
    return QuickRun(
        ref, key, finished=True, value=await run_result(run, returns) if returns else None
    )


@returns_error(ValidationResult)
async def validate_dataset(
    parameters: dict[str, Any],
    *,
    idempotency_key: str | None,
    wait_seconds: float,
    report_progress: ReportProgress | None,
) -> ValidationResult:
    """Run the `validate` deployment and return its report, waiting at most `wait_seconds`."""
    outcome = await run_quick_flow(
        DeploymentName.VALIDATE,
        parameters,
        ValidationReport,
        idempotency_key=idempotency_key,
        wait_seconds=wait_seconds,
        report_progress=report_progress,
    )
    report: ValidationReport | None = outcome.value
    return ValidationResult(**outcome.fields(), report=report, valid=report.ok if report else None)


@returns_error(EstimateResult)
async def estimate_cost(
    parameters: dict[str, Any],
    *,
    idempotency_key: str | None,
    wait_seconds: float,
    report_progress: ReportProgress | None,
) -> EstimateResult:
    """Run the `estimate` deployment (validate, then estimate) and return the estimate."""
    outcome = await run_quick_flow(
        DeploymentName.ESTIMATE,
        parameters,
        CostEstimate,
        idempotency_key=idempotency_key,
        wait_seconds=wait_seconds,
        report_progress=report_progress,
    )
    return EstimateResult(**outcome.fields(), estimate=outcome.value)


@returns_error(JobCreated)
async def create_job(
    request: FineTuneRequest,
    *,
    idempotency_key: str | None,
    wait_seconds: float,
    report_progress: ReportProgress | None,
) -> JobCreated:
    """Start a `finetune` run; wait at most `wait_seconds` for it to reach the approval gate."""
    key = new_key(idempotency_key)
    parameters = {"request": request.model_dump(mode="json"), "idempotency_key": key}
    run = await start_run(DeploymentName.FINETUNE, parameters, idempotency_key=key)
    if run.parameters.get("request") not in (None, parameters["request"]):
        raise ExpectedFailure(
            f"idempotency_key {key!r} already started flow run {run.name} with a different request; "
            "use a new key for a new job"
        )
    async with get_client() as client:

        async def at_gate(current: FlowRun) -> bool:
            gate = gate_of(current, await read_status(client, current.id))
            return gate not in (None, GateStatus.NOT_REACHED)

        run = await wait_for_run(
            client, run, seconds=wait_seconds, report_progress=report_progress, until=at_gate
        )
        status = await read_status(client, run.id)
    gate = gate_of(run, status)
    ref = run_ref(run, DeploymentName.FINETUNE.flow_name)
    return JobCreated(
        run=ref,
        idempotency_key=key,
        gate=gate,
        approval_required=(
            {GateStatus.AWAITING_APPROVAL: True, GateStatus.PASSED: False}.get(gate)
            if gate
            else None
        ),
        estimate=status.gate.estimate if status else None,
        error=ended_without_completing(ref, key),
    )


def ended_without_completing(ref: FlowRunRef, key: str) -> str | None:
    """The error of a run that a key found ended Crashed, Failed or Cancelled (a key starts one run)."""
    if not ref.is_final or ref.state is RunState.COMPLETED:
        return None
    return (
        f"flow run {ref.name} of idempotency_key {key!r} ended {ref.state_name}: "
        f"{ref.state_message or 'no message'} (see {ref.ui_url}); a key always returns the same "
        "run, so start again with a new idempotency_key"
    )


@returns_error(RunStarted)
async def start_long_run(
    deployment: DeploymentName, parameters: dict[str, Any], *, idempotency_key: str | None
) -> RunStarted:
    """Start a run of `deployment` and return at once (conversion, deployment)."""
    key = new_key(idempotency_key)
    run = await start_run(deployment, parameters, idempotency_key=key)
    return RunStarted(run=run_ref(run, deployment.flow_name), idempotency_key=key)


@returns_error(ModelsResult)
async def read_models(
    parameters: dict[str, Any],
    *,
    idempotency_key: str | None,
    wait_seconds: float,
    report_progress: ReportProgress | None,
) -> ModelsResult:
    """Run the `models` deployment and return the registry it read."""
    outcome = await run_quick_flow(
        DeploymentName.MODELS,
        parameters,
        ModelRegistryView,
        idempotency_key=idempotency_key,
        wait_seconds=wait_seconds,
        report_progress=report_progress,
    )
    return ModelsResult(**outcome.fields(), registry=outcome.value)


@returns_error(CostsResult)
async def cost_report(
    parameters: dict[str, Any],
    *,
    idempotency_key: str | None,
    wait_seconds: float,
    report_progress: ReportProgress | None,
) -> CostsResult:
    """Run the `cost_report` deployment and return the artifacts it published."""
    outcome = await run_quick_flow(
        DeploymentName.COST_REPORT,
        parameters,
        None,
        idempotency_key=idempotency_key,
        wait_seconds=wait_seconds,
        report_progress=report_progress,
    )
    if outcome.error:
        return CostsResult(run=outcome.ref, finished=outcome.finished, error=outcome.error)
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(outcome.ref.id)])
            ),
            sort=ArtifactSort.CREATED_DESC,
        )
    views = [
        ArtifactView(key=a.key, type=a.type, description=a.description, data=_artifact_data(a))
        for a in artifacts
    ]
    return CostsResult(run=outcome.ref, finished=True, artifacts=views)


def _artifact_data(artifact: Artifact) -> Any:
    """Table artifacts hold their rows as a JSON string; everything else as is."""
    if artifact.type == "table" and isinstance(artifact.data, str):
        return json.loads(artifact.data)
    return artifact.data
