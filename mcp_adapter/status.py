"""Tools that read runs: a run's published status, the list of fine-tuning runs, a run's log."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort, LogSort

from mcp_adapter.models import GateStatus, JobList, JobLogs, JobStatus, LogLine, RunState
from mcp_adapter.runs import (
    flow_name,
    read_run,
    returns_error,
    run_ref,
    waits_for_input,
)
from schemas.flows import DeploymentName
from schemas.status import STATUS_ARTIFACT_KEY, GateDecision, RunStatus

SUMMARY_ARTIFACT_KEY = "finetune-summary"

# Token shapes that must never leave through a tool, whatever a flow logged.
_SECRET = re.compile(
    r"(hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,}|(?i:bearer)\s+[\w.~+/=-]{16,})"
)


def gate_of(run: FlowRun, status: RunStatus | None) -> GateStatus | None:
    """The gate as the tools name it, from the gate decision the run published and its state.

    A run waits for approval once it has said so and Prefect holds it paused for input (between
    the two it is still on its way there). Runs without a budget gate (convert, deploy, ...) have
    none, unless they published one.
    """
    if status is None:
        return None
    decision = status.gate.decision
    ended = bool(run.state and run.state.is_final())
    if decision is GateDecision.AWAITING_APPROVAL and waits_for_input(run):
        return GateStatus.AWAITING_APPROVAL
    if decision.lets_through:
        return GateStatus.PASSED
    if decision.stops:
        return GateStatus.STOPPED
    if decision is GateDecision.NOT_REACHED and status.flow != DeploymentName.FINETUNE.flow_name:
        return None
    return GateStatus.STOPPED if ended else GateStatus.NOT_REACHED


@returns_error(JobStatus)
async def job_status(run_id: UUID) -> JobStatus:
    """A run's state, and the status it published: stage, gate, progress, cost so far, links."""
    async with get_client() as client:
        run = await read_run(client, run_id)
        published = await client.read_artifacts(  # the status and the summary in one request
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[STATUS_ARTIFACT_KEY, SUMMARY_ARTIFACT_KEY]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
            ),
        )
        ref = run_ref(run, await flow_name(client, run))
    by_key = {artifact.key: artifact.data for artifact in published}
    status = (
        RunStatus.model_validate(by_key[STATUS_ARTIFACT_KEY])
        if STATUS_ARTIFACT_KEY in by_key
        else None
    )
    return JobStatus(
        run=ref,
        stage=status.stage if status else None,
        gate=gate_of(run, status),
        progress=status.training if status else None,
        estimate=status.gate.estimate if status else None,
        cost_so_far_usd=status.cost_so_far_usd if status else None,
        links=status.links if status else None,
        summary_markdown=by_key.get(SUMMARY_ARTIFACT_KEY),
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
                level=logging.getLevelName(log.level),
                message=_SECRET.sub("[redacted]", log.message),
            )
            for log in reversed(logs)
        ],
    )
