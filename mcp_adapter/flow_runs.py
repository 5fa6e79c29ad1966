"""What the MCP tools do, in Prefect terms: start, read, resume and cancel flow runs.

Every operation goes through the Prefect client, so every assistant action is a flow run (or
a state change of one) that the Prefect UI shows. Expected failures (a missing deployment,
an unknown run, a run in the wrong state, an unreachable API) come back as the result's
`error`; the tools never raise them as tracebacks.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar
from uuid import UUID

import anyio
import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import Artifact, FlowRun, StateType
from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort, LogSort
from prefect.deployments import arun_deployment
from prefect.exceptions import (
    FlowPauseTimeout,
    MissingResult,
    NotPausedError,
    ObjectNotFound,
    PrefectHTTPStatusError,
)
from prefect.flow_runs import aresume_flow_run
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelled, Cancelling
from prefect.utilities.urls import url_for
from pydantic import BaseModel

from mcp_adapter.models import (
    ApprovalResult,
    ArtifactView,
    CancelResult,
    CostsResult,
    EstimateResult,
    FlowRunRef,
    GateStatus,
    JobCreated,
    JobList,
    JobLogs,
    JobStatus,
    LogLine,
    RunStarted,
    RunState,
    ToolResult,
    TrainingProgress,
    ValidationResult,
)
from schemas.approval import ApprovalDecision
from schemas.costs import ESTIMATE_FIGURES_KEY, CostEstimate, cost_so_far
from schemas.flows import DeploymentName
from schemas.request import FineTuneRequest
from schemas.validation import ValidationReport

ReportProgress = Callable[[float, float | None, str | None], Awaitable[None]]
"""`fastmcp.Context.report_progress`: (progress, total, message)."""

POLL_SECONDS = 1.0
PROGRESS_ARTIFACT_PREFIX = "training-progress-"
SUMMARY_ARTIFACT_KEY = "finetune-summary"
TAGS = ["mcp"]

# The training monitor (`tasks.jobs.training.monitor_training`) logs one line per progress record:
# "step 3/10  loss 1.2345  lr 2.00e-04  eta 12s".
_MONITOR_LINE = re.compile(r"step (\d+)/(\d+)\s+loss (\S+)\s+lr \S+\s+eta (\S+?)s?$")
# Token shapes that must never leave through a tool, whatever a flow logged.
_SECRET = re.compile(
    r"(hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,}|(?i:bearer)\s+[\w.~+/=-]{16,})"
)


class ExpectedFailure(Exception):
    """A failure the caller can act on; its message becomes the tool result's `error`."""


Result = TypeVar("Result", bound=ToolResult)


def returns_error(
    result: type[Result],
) -> Callable[[Callable[..., Awaitable[Result]]], Callable[..., Awaitable[Result]]]:
    """Turn the expected failures of an operation into `result(error=...)`."""

    def decorate(operation: Callable[..., Awaitable[Result]]) -> Callable[..., Awaitable[Result]]:
        @functools.wraps(operation)
        async def wrapper(*args: Any, **kwargs: Any) -> Result:
            try:
                return await operation(*args, **kwargs)
            except ExpectedFailure as exc:
                return result(error=str(exc))
            except httpx.TransportError:
                return result(
                    error=f"the Prefect API at {PREFECT_API_URL.value()} is unreachable: start it "
                    "(`prefect server start`) or point PREFECT_API_URL at a running server"
                )
            except PrefectHTTPStatusError as exc:
                return result(error=f"the Prefect API refused the request: {_http_detail(exc)}")

        return wrapper

    return decorate


# -- reading runs ------------------------------------------------------------------------------


def run_ref(run: FlowRun, flow: str | None = None) -> FlowRunRef:
    """The tool-facing view of a flow run."""
    state = run.state
    return FlowRunRef(
        id=str(run.id),
        name=run.name,
        flow=flow,
        state=RunState(state.type.value.lower()) if state else RunState.PENDING,
        state_name=state.name if state else "Pending",
        state_message=state.message if state else None,
        ui_url=url_for("flow-run", obj_id=run.id),
        created=run.created,
        start_time=run.start_time,
        end_time=run.end_time,
    )


async def read_run(client: PrefectClient, run_id: UUID) -> FlowRun:
    try:
        return await client.read_flow_run(run_id)
    except ObjectNotFound:
        raise ExpectedFailure(
            f"no flow run with id {run_id}: use list_jobs to find the run"
        ) from None


async def flow_name(client: PrefectClient, run: FlowRun) -> str:
    return (await client.read_flow(run.flow_id)).name


async def wait_for_run(
    client: PrefectClient,
    run: FlowRun,
    *,
    seconds: float,
    report_progress: ReportProgress | None,
    until: Callable[[FlowRun], Awaitable[bool]] | None = None,
) -> FlowRun:
    """Poll the run until it is final (or `until(run)` holds), at most `seconds`; report progress.

    `prefect.flow_runs.wait_for_flow_run` waits the same way but cannot report progress to the
    MCP client while it waits, and only stops at a final state.
    """
    started = time.monotonic()
    while True:
        if run.state and run.state.is_final():
            return run
        if until is not None and await until(run):
            return run
        elapsed = time.monotonic() - started
        if elapsed >= seconds:
            return run
        if report_progress is not None:
            state = run.state.name if run.state else "Pending"
            await report_progress(round(elapsed, 1), seconds, f"flow run {run.name}: {state}")
        await anyio.sleep(min(POLL_SECONDS, max(0.0, seconds - elapsed)))
        run = await client.read_flow_run(run.id)


async def run_result(run: FlowRun, model: type[BaseModel]) -> Any:
    """The return value of a completed run, read from its persisted result."""
    try:
        value = await run.state.aresult(raise_on_failure=False)
    except (MissingResult, OSError):  # not persisted, or persisted where this machine cannot read
        raise ExpectedFailure(
            f"flow run {run.id} completed but its result is not readable from here: the worker and "
            "this server must share result storage (set PREFECT_DEFAULT_RESULT_STORAGE_BLOCK on both)"
        ) from None
    return model.model_validate(value.model_dump() if isinstance(value, BaseModel) else value)


async def run_artifacts(client: PrefectClient, run_id: UUID) -> list[Artifact]:
    """The run's artifacts, newest first (every version of keyed ones)."""
    return await client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])),
        sort=ArtifactSort.CREATED_DESC,
    )


def latest(artifacts: list[Artifact], key_prefix: str) -> Artifact | None:
    return next((a for a in artifacts if a.key and a.key.startswith(key_prefix)), None)


def artifact_rows(artifact: Artifact) -> Any:
    """Table artifacts hold their rows as a JSON string; everything else as is."""
    if artifact.type == "table" and isinstance(artifact.data, str):
        return json.loads(artifact.data)
    return artifact.data


def estimate_of(artifacts: list[Artifact]) -> CostEstimate | None:
    found = next((a for a in artifacts if a.key == ESTIMATE_FIGURES_KEY), None)
    rows = artifact_rows(found) if found else None
    return CostEstimate.model_validate(rows[0]) if rows else None


def gate_status(run: FlowRun, artifacts: list[Artifact], flow: str) -> GateStatus | None:
    """Read the approval gate from the run's state (a pause waiting for input) and artifacts.

    Any run paused for input awaits a decision; the other stages only exist in `finetune` runs.
    """
    state = run.state
    if state and state.is_paused() and state.state_details.run_input_keyset:
        return GateStatus.AWAITING_APPROVAL
    if flow != DeploymentName.FINETUNE.flow_name:
        return None
    if latest(artifacts, PROGRESS_ARTIFACT_PREFIX) is not None:  # the training monitor has started
        return GateStatus.PASSED
    if state and state.is_final():
        return GateStatus.STOPPED
    return GateStatus.NOT_REACHED


# -- starting runs -----------------------------------------------------------------------------


async def start_run(
    deployment: DeploymentName, parameters: dict[str, Any], *, idempotency_key: str
) -> FlowRun:
    """Create a run of `deployment` and return at once; the same key returns the same run."""
    try:
        return await arun_deployment(
            deployment.value,
            parameters=parameters,
            timeout=0,
            idempotency_key=f"{deployment.flow_name}:{idempotency_key}",
            tags=TAGS,
            as_subflow=False,
        )
    except ObjectNotFound:
        raise ExpectedFailure(
            f"deployment {deployment.value!r} not found on {PREFECT_API_URL.value()}: run "
            "`prefect deploy --all` (or `python -m deployments.serve` on this machine)"
        ) from None
    except PrefectHTTPStatusError as exc:
        raise ExpectedFailure(
            f"deployment {deployment.value!r} refused the run: {_http_detail(exc)}"
        ) from None


def new_key(idempotency_key: str | None) -> str:
    return idempotency_key or uuid.uuid4().hex


class QuickRun(NamedTuple):
    """A quick flow run as its tool reports it: finished or not, its result or the error."""

    ref: FlowRunRef
    key: str
    finished: bool
    value: Any = None
    error: str | None = None


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
    request: FineTuneRequest,
    *,
    idempotency_key: str | None,
    wait_seconds: float,
    report_progress: ReportProgress | None,
) -> ValidationResult:
    """Run the `validate` deployment and return its report, waiting at most `wait_seconds`."""
    outcome = await run_quick_flow(
        DeploymentName.VALIDATE,
        {"request": request.model_dump(mode="json")},
        ValidationReport,
        idempotency_key=idempotency_key,
        wait_seconds=wait_seconds,
        report_progress=report_progress,
    )
    report: ValidationReport | None = outcome.value
    return ValidationResult(
        run=outcome.ref,
        idempotency_key=outcome.key,
        finished=outcome.finished,
        error=outcome.error,
        report=report,
        valid=report.ok if report else None,
    )


@returns_error(EstimateResult)
async def estimate_cost(
    request: FineTuneRequest,
    *,
    idempotency_key: str | None,
    wait_seconds: float,
    report_progress: ReportProgress | None,
) -> EstimateResult:
    """Run the `estimate` deployment (validate, then estimate) and return the estimate."""
    outcome = await run_quick_flow(
        DeploymentName.ESTIMATE,
        {"request": request.model_dump(mode="json")},
        CostEstimate,
        idempotency_key=idempotency_key,
        wait_seconds=wait_seconds,
        report_progress=report_progress,
    )
    return EstimateResult(
        run=outcome.ref,
        idempotency_key=outcome.key,
        finished=outcome.finished,
        error=outcome.error,
        estimate=outcome.value,
    )


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
        artifacts: list[Artifact] = []

        async def at_gate(current: FlowRun) -> bool:
            nonlocal artifacts
            artifacts = await run_artifacts(client, current.id)
            return (
                gate_status(current, artifacts, DeploymentName.FINETUNE.flow_name)
                is not GateStatus.NOT_REACHED
            )

        run = await wait_for_run(
            client, run, seconds=wait_seconds, report_progress=report_progress, until=at_gate
        )
        artifacts = await run_artifacts(client, run.id)
    gate = gate_status(run, artifacts, DeploymentName.FINETUNE.flow_name)
    ref = run_ref(run, DeploymentName.FINETUNE.flow_name)
    return JobCreated(
        run=ref,
        idempotency_key=key,
        gate=gate,
        approval_required={GateStatus.AWAITING_APPROVAL: True, GateStatus.PASSED: False}.get(gate),
        estimate=estimate_of(artifacts),
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


async def training_progress(
    client: PrefectClient, run: FlowRun, artifacts: list[Artifact]
) -> TrainingProgress | None:
    """Percent from the monitor's progress artifact; step, loss and ETA from its last log line."""
    artifact = latest(artifacts, PROGRESS_ARTIFACT_PREFIX)
    if artifact is None:
        return None
    progress = TrainingProgress(percent=float(artifact.data) if artifact.data is not None else None)
    logs = await client.read_logs(
        LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
        limit=200,
        sort=LogSort.TIMESTAMP_DESC,
    )
    for log in logs:
        if match := _MONITOR_LINE.search(log.message):
            step, total, loss, eta = match.groups()
            progress.step, progress.total_steps = int(step), int(total)
            progress.loss = None if loss == "nan" else float(loss)
            progress.eta_seconds = None if eta == "?" else float(eta)
            break
    return progress


def training_cost(
    run: FlowRun, artifacts: list[Artifact], estimate: CostEstimate | None
) -> float | None:
    """What the training has cost so far: the hardware's price × the time since it started."""
    started = latest(artifacts, PROGRESS_ARTIFACT_PREFIX)
    if estimate is None or started is None or started.created is None:
        return None
    return cost_so_far(estimate, started.created, run.end_time)


@returns_error(JobStatus)
async def job_status(run_id: UUID) -> JobStatus:
    """State, gate, progress, cost so far and summary of a run."""
    async with get_client() as client:
        run = await read_run(client, run_id)
        artifacts = await run_artifacts(client, run.id)
        estimate = estimate_of(artifacts)
        summary = latest(artifacts, SUMMARY_ARTIFACT_KEY)
        flow = await flow_name(client, run)
        return JobStatus(
            run=run_ref(run, flow),
            gate=gate_status(run, artifacts, flow),
            progress=await training_progress(client, run, artifacts),
            estimate=estimate,
            cost_so_far_usd=training_cost(run, artifacts, estimate),
            links=[a.data for a in artifacts if a.type == "link" and isinstance(a.data, str)],
            summary_markdown=summary.data if summary else None,
        )


@returns_error(JobList)
async def list_jobs(
    *, states: list[RunState] | None, since: datetime | None, limit: int
) -> JobList:
    """The `finetune` runs, newest first, optionally by state and start time."""
    run_filter = FlowRunFilter(
        state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType(s.value.upper()) for s in states])
        )
        if states
        else None,
        expected_start_time=FlowRunFilterExpectedStartTime(
            after_=since if since.tzinfo else since.replace(tzinfo=UTC)
        )
        if since
        else None,
    )
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[DeploymentName.FINETUNE.flow_name])),
            flow_run_filter=run_filter,
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=limit,
        )
    return JobList(jobs=[run_ref(run, DeploymentName.FINETUNE.flow_name) for run in runs])


@returns_error(ApprovalResult)
async def decide_approval(run_id: UUID, decision: ApprovalDecision) -> ApprovalResult:
    """Resume a run paused at the approval gate with the typed decision."""
    async with get_client() as client:
        run = await read_run(client, run_id)
        if not (run.state and run.state.is_paused() and run.state.state_details.run_input_keyset):
            state = run.state.name if run.state else "Pending"
            raise ExpectedFailure(
                f"flow run {run.name} is not waiting for approval (it is {state})"
            )
        try:
            await aresume_flow_run(run.id, run_input=decision.model_dump())
        except (
            NotPausedError,
            FlowPauseTimeout,
            RuntimeError,
        ) as exc:  # RuntimeError: resume refused
            raise ExpectedFailure(f"flow run {run.name} could not be resumed: {exc}") from None
        run = await client.read_flow_run(run.id)
        return ApprovalResult(
            run=run_ref(run, await flow_name(client, run)),
            approved=decision.approve,
            note=decision.note,
            approver=decision.approver,
        )


@returns_error(CancelResult)
async def cancel_run(
    run_id: UUID, *, wait_seconds: float, report_progress: ReportProgress | None
) -> CancelResult:
    """Ask the run to stop: a run that has not started is cancelled at once; a started one goes
    through Cancelling, so its worker stops it and its on_cancellation hook cancels the training job."""
    async with get_client() as client:
        run = await read_run(client, run_id)
        if run.state and run.state.is_final():
            raise ExpectedFailure(
                f"flow run {run.name} has already ended ({run.state.name}); nothing to cancel"
            )
        not_started = run.state is None or run.state.type is StateType.SCHEDULED
        state = (
            Cancelled(message="cancelled through MCP")
            if not_started
            else Cancelling(message="cancelled through MCP")
        )
        response = await client.set_flow_run_state(run.id, state)
        if response.state is None or response.state.type not in (
            StateType.CANCELLING,
            StateType.CANCELLED,
        ):
            raise ExpectedFailure(
                f"the Prefect API did not accept the cancellation: {response.details}"
            )
        run = await client.read_flow_run(run.id)
        run = await wait_for_run(client, run, seconds=wait_seconds, report_progress=report_progress)
        ref = run_ref(run, await flow_name(client, run))
    return CancelResult(run=ref, cancelled=ref.state is RunState.CANCELLED)


@returns_error(JobLogs)
async def run_logs(run_id: UUID, *, lines: int) -> JobLogs:
    """The last `lines` log lines of a run, oldest first, with tokens redacted."""
    async with get_client() as client:
        run = await read_run(client, run_id)
        logs = await client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
            limit=lines,
            sort=LogSort.TIMESTAMP_DESC,
        )
    return JobLogs(
        run_id=str(run.id),
        lines=[
            LogLine(
                timestamp=log.timestamp,
                level=_level_name(log.level),
                message=_SECRET.sub("[redacted]", log.message),
            )
            for log in reversed(logs)
        ],
    )


@returns_error(RunStarted)
async def start_long_run(
    deployment: DeploymentName, parameters: dict[str, Any], *, idempotency_key: str | None
) -> RunStarted:
    """Start a run of `deployment` and return at once (conversion, deployment)."""
    key = new_key(idempotency_key)
    run = await start_run(deployment, parameters, idempotency_key=key)
    return RunStarted(run=run_ref(run, deployment.flow_name), idempotency_key=key)


@returns_error(CostsResult)
async def cost_report(
    month: str | None,
    *,
    idempotency_key: str | None,
    wait_seconds: float,
    report_progress: ReportProgress | None,
) -> CostsResult:
    """Run the `cost_report` deployment for `month` and return the artifacts it published."""
    outcome = await run_quick_flow(
        DeploymentName.COST_REPORT,
        {"month": month} if month else {},
        None,
        idempotency_key=idempotency_key,
        wait_seconds=wait_seconds,
        report_progress=report_progress,
    )
    if outcome.error:
        return CostsResult(run=outcome.ref, finished=outcome.finished, error=outcome.error)
    async with get_client() as client:
        artifacts = await run_artifacts(client, UUID(outcome.ref.id))
    views = [
        ArtifactView(key=a.key, type=a.type, description=a.description, data=artifact_rows(a))
        for a in artifacts
    ]
    return CostsResult(run=outcome.ref, finished=True, artifacts=views)


def _level_name(level: int) -> str:
    return logging.getLevelName(level)


def _http_detail(exc: PrefectHTTPStatusError) -> str:
    try:
        detail = exc.response.json().get("detail", exc.response.text)
    except ValueError:
        detail = exc.response.text
    return f"HTTP {exc.response.status_code}: {detail}"
