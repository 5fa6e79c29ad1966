"""Tools that steer a run: approve or reject one waiting at its budget gate, cancel one."""

from __future__ import annotations

from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.exceptions import FlowPauseTimeout, NotPausedError
from prefect.flow_runs import aresume_flow_run
from prefect.states import Cancelled, Cancelling

from mcp_adapter.models import ApprovalResult, CancelResult, RunState
from mcp_adapter.runs import (
    ExpectedFailure,
    ReportProgress,
    flow_name,
    read_run,
    returns_error,
    run_ref,
    wait_for_run,
    waits_for_input,
)
from schemas.approval import ApprovalDecision


@returns_error(ApprovalResult)
async def decide_approval(run_id: UUID, decision: ApprovalDecision) -> ApprovalResult:
    """Resume a run paused at the approval gate with the typed decision."""
    async with get_client() as client:
        run = await read_run(client, run_id)
        if not waits_for_input(run):
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
