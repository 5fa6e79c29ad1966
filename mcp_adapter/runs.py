"""The Prefect plumbing every tool shares: start a run, read it, wait for it, read its status.

Every operation goes through the Prefect client, so every assistant action is a flow run (or
a state change of one) that the Prefect UI shows. Expected failures (a missing deployment,
an unknown run, a run in the wrong state, an unreachable API) come back as the result's
`error`; the tools never raise them as tracebacks.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import UUID

import anyio
import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import arun_deployment
from prefect.exceptions import MissingResult, ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL
from prefect.utilities.urls import url_for
from pydantic import BaseModel

from mcp_adapter.models import FlowRunRef, RunState, ToolResult
from schemas.flows import DeploymentName
from schemas.status import STATUS_ARTIFACT_KEY, RunStatus

ReportProgress = Callable[[float, float | None, str | None], Awaitable[None]]
"""`fastmcp.Context.report_progress`: (progress, total, message)."""

POLL_SECONDS = 1.0
TAGS = ["mcp"]


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
                return result(error=f"the Prefect API refused the request: {http_detail(exc)}")

        return wrapper

    return decorate


def http_detail(exc: PrefectHTTPStatusError) -> str:
    try:
        detail = exc.response.json().get("detail", exc.response.text)
    except ValueError:
        detail = exc.response.text
    return f"HTTP {exc.response.status_code}: {detail}"


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


async def read_status(client: PrefectClient, run_id: UUID) -> RunStatus | None:
    """The status the run published (its `run-status` artifact), or None before it published one."""
    artifacts = await client.read_artifacts(
        artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[STATUS_ARTIFACT_KEY]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
        ),
        limit=1,
    )
    return RunStatus.model_validate(artifacts[0].data) if artifacts else None


def waits_for_input(run: FlowRun) -> bool:
    """Paused (or suspended) until someone sends it typed input, e.g. an approval."""
    state = run.state
    return bool(state and state.is_paused() and state.state_details.run_input_keyset)


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


def new_key(idempotency_key: str | None) -> str:
    return idempotency_key or uuid.uuid4().hex


def flow_parameters(**values: Any) -> dict[str, Any]:
    """Tool arguments as a flow's parameters: models as JSON, unset ones left to the flow's defaults."""
    return {
        name: value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        for name, value in values.items()
        if value is not None
    }


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
            f"deployment {deployment.value!r} refused the run: {http_detail(exc)}"
        ) from None
