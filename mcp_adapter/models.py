"""What the MCP tools return: typed results with an `error` field for expected failures.

An assistant reads these as structured content; every field says what it means and, where
there is one, what to do next. None of them carries a secret.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from schemas.costs import CostEstimate
from schemas.registry import ModelRegistryView
from schemas.status import RunLinks, Stage, TrainingProgress
from schemas.validation import ValidationReport


class RunState(str, Enum):
    """A Prefect flow run's state type."""

    SCHEDULED = "scheduled"
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CRASHED = "crashed"


FINAL_STATES = (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED, RunState.CRASHED)


class GateStatus(str, Enum):
    """Where a fine-tuning run stands with respect to the budget and approval gate."""

    NOT_REACHED = "not_reached"
    """Still queued, validating or estimating: poll get_job_status."""
    AWAITING_APPROVAL = "awaiting_approval"
    """Paused until someone calls approve_job or reject_job (or uses the Prefect UI form)."""
    PASSED = "passed"
    """The gate let the run through to training: approved, or cheap enough to need no approval."""
    STOPPED = "stopped"
    """Rejected or timed out at the gate, or the run ended before it (invalid dataset, over
    budget, cancelled)."""


class FlowRunRef(BaseModel):
    """A Prefect flow run, as the Prefect UI shows it."""

    id: str = Field(
        description="Flow run id: pass it to get_job_status, approve_job, cancel_job, get_job_logs."
    )
    name: str
    flow: str | None = Field(
        default=None, description="Flow name (finetune, validate, estimate, convert, ...)."
    )
    state: RunState
    state_name: str = Field(
        description="Prefect's state name, e.g. 'Running', 'Paused', 'AwaitingRetry'."
    )
    state_message: str | None = Field(
        default=None, description="Why the run is in this state (errors included)."
    )
    ui_url: str | None = Field(default=None, description="The run's page in the Prefect UI.")
    created: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


class ToolResult(BaseModel):
    """Common to every result: `error` is set (and the rest may be empty) when the call failed."""

    error: str | None = Field(
        default=None, description="What went wrong and what to do; null when the call succeeded."
    )


class ValidationResult(ToolResult):
    """The outcome of a `validate` flow run."""

    run: FlowRunRef | None = None
    idempotency_key: str | None = Field(
        default=None, description="Pass it again to pick up this same run."
    )
    finished: bool = Field(
        default=False, description="False when the run was still going at the wait bound."
    )
    report: ValidationReport | None = None
    valid: bool | None = Field(default=None, description="True when the report has no errors.")


class EstimateResult(ToolResult):
    """The outcome of an `estimate` flow run (validation, then cost)."""

    run: FlowRunRef | None = None
    idempotency_key: str | None = Field(
        default=None, description="Pass it again to pick up this same run."
    )
    finished: bool = Field(
        default=False, description="False when the run was still going at the wait bound."
    )
    estimate: CostEstimate | None = None


class JobCreated(ToolResult):
    """A `finetune` flow run that create_job started (or found again by its idempotency key)."""

    run: FlowRunRef | None = None
    idempotency_key: str | None = Field(
        default=None, description="The same key always returns this same run."
    )
    gate: GateStatus | None = Field(default=None, description="Whether the run waits for approval.")
    approval_required: bool | None = Field(
        default=None,
        description="True: waiting for approve_job/reject_job. False: past the gate. Null: not known yet.",
    )
    estimate: CostEstimate | None = Field(
        default=None, description="The run's cost estimate, once it has one."
    )


class JobStatus(ToolResult):
    """A run's state and the status it published: stage, gate, progress, cost so far, links."""

    run: FlowRunRef | None = None
    stage: Stage | None = Field(
        default=None,
        description="Pipeline stage the run published (finetune, convert and deploy runs).",
    )
    gate: GateStatus | None = Field(
        default=None,
        description="The approval gate (runs of other flows: null unless they wait for approval).",
    )
    progress: TrainingProgress | None = Field(
        default=None,
        description="Training step/total, loss and eval loss, ETA, once training runs.",
    )
    estimate: CostEstimate | None = None
    cost_so_far_usd: float | None = Field(
        default=None,
        description="Hardware price × time the training has run (0 on the local backend).",
    )
    links: RunLinks | None = Field(
        default=None,
        description="Hugging Face job page, Trackio dashboard, model, GGUF, pull request, serving URL.",
    )
    summary_markdown: str | None = Field(
        default=None, description="The run's summary, once it has finished."
    )


class JobList(ToolResult):
    """Fine-tuning runs, newest first."""

    jobs: list[FlowRunRef] = []


class ApprovalResult(ToolResult):
    """The decision sent to a paused run, and the run's state afterwards."""

    run: FlowRunRef | None = None
    approved: bool | None = None
    note: str | None = None
    approver: str | None = None


class CancelResult(ToolResult):
    """A run after its cancellation was requested."""

    run: FlowRunRef | None = None
    cancelled: bool = Field(default=False, description="True once the run has reached Cancelled.")


class LogLine(BaseModel):
    timestamp: datetime
    level: str
    message: str


class JobLogs(ToolResult):
    """The last lines a run logged (flow and task logs, oldest first; tokens redacted)."""

    run_id: str | None = None
    lines: list[LogLine] = []


class RunStarted(ToolResult):
    """A long run (conversion, deployment) that was started; follow it with get_job_status."""

    run: FlowRunRef | None = None
    idempotency_key: str | None = None


class ArtifactView(BaseModel):
    """An artifact a run published (tables as rows, markdown as text)."""

    key: str | None
    type: str | None
    description: str | None = None
    data: Any = None


class CostsResult(ToolResult):
    """The outcome of a `cost_report` flow run: its artifacts (spend, reservations, budget left)."""

    run: FlowRunRef | None = None
    finished: bool = False
    artifacts: list[ArtifactView] = []


class ModelsResult(ToolResult):
    """The outcome of a `models` flow run: registered models, their lineage, figures and deploys."""

    run: FlowRunRef | None = None
    idempotency_key: str | None = Field(
        default=None, description="Pass it again to pick up this same run."
    )
    finished: bool = Field(
        default=False, description="False when the run was still going at the wait bound."
    )
    registry: ModelRegistryView | None = Field(
        default=None,
        description="Models newest first: base model, dataset sha256, eval loss, GGUF files and "
        "quality, promotion decision, every deploy (what it replaced) and where each serves now.",
    )
