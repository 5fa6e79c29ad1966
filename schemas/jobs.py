"""Records shared by the job backends and the monitor."""

from __future__ import annotations

import json
from datetime import datetime
from enum import Enum

from pydantic import BaseModel, Field

from schemas.request import Backend

PROGRESS_PREFIX = "LMFT_PROGRESS "
RESULT_PREFIX = "LMFT_RESULT "
STOPPED_PREFIX = "LMFT_STOPPED "


class JobState(str, Enum):
    """Lifecycle of a training job, the same for every backend."""

    SCHEDULING = "scheduling"
    RUNNING = "running"
    COMPLETED = "completed"
    ERROR = "error"
    CANCELLED = "cancelled"


TERMINAL_STATES = (JobState.COMPLETED, JobState.ERROR, JobState.CANCELLED)


class JobHandle(BaseModel):
    """How to find a submitted job again, from any process."""

    backend: Backend
    job_id: str
    idempotency_key: str
    submitted_at: datetime
    url: str | None = Field(default=None, description="Job page (HF Jobs) or log file (local).")
    output_dir: str | None = Field(
        default=None, description="Where the job writes its model (local)."
    )
    namespace: str | None = None
    labels: dict[str, str] = {}


class JobStatus(BaseModel):
    """A job's state as read from its backend."""

    state: JobState
    exit_code: int | None = None
    message: str | None = None
    running_seconds: float | None = Field(
        default=None, description="Billed running time, when the backend reports it."
    )

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class ProgressUpdate(BaseModel):
    """One `LMFT_PROGRESS` line of the training script."""

    step: int
    total_steps: int
    loss: float | None = None
    learning_rate: float | None = None
    epoch: float | None = None
    elapsed_seconds: float | None = None
    eta_seconds: float | None = None
    eval_loss: float | None = Field(
        default=None, description="Set on evaluation lines (step 0: the base model)."
    )
    base_eval_loss: float | None = None
    resumed_from_step: int | None = None

    model_config = {"extra": "allow"}

    @property
    def is_evaluation(self) -> bool:
        return self.eval_loss is not None

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0


class ResumePoint(BaseModel):
    """Where a new job starts: the last checkpoint an earlier job left."""

    checkpoint: str = Field(
        description="The checkpoint for train.py: a local folder, or 'hub:NS/REPO' (its checkpoints/last)."
    )
    step: int = Field(description="The global step the checkpoint was saved at.")
    total_steps: int = Field(description="The steps of the run that saved it.")
    job_id: str = Field(description="The job that saved it.")

    @property
    def finished(self) -> bool:
        """The run had reached its last step: continuing it starts a new schedule from its adapter."""
        return self.step >= self.total_steps


class EvalPoint(BaseModel):
    """The eval loss at one step (step 0: the base model)."""

    step: int
    eval_loss: float


class TrainingResult(BaseModel):
    """What a finished training job produced."""

    handle: JobHandle
    model_dir: str | None = Field(description="Merged model folder (local backend).")
    adapter_dir: str | None = None
    hub_repo: str | None = None
    hub_revision: str | None = None
    global_step: int
    first_loss: float | None
    final_loss: float | None
    train_seconds: float
    trackio_project: str
    base_eval_loss: float | None = Field(
        default=None, description="Eval loss of the base model, before training."
    )
    eval_loss: float | None = Field(
        default=None, description="Eval loss of the model saved (the best checkpoint's)."
    )
    best_step: int | None = Field(
        default=None, description="The checkpoint the saved model comes from."
    )
    eval_history: list[EvalPoint] = []
    stopped_early: bool = False
    resumed_from_step: int | None = None
    earlier_jobs: list[str] = Field(
        default=[], description="Jobs of the same run that ended early, resumed by this one."
    )
    running_seconds: float | None = Field(
        default=None,
        description="The job's running time as its backend bills it (from RUNNING to its end).",
    )


class TrainingFailed(RuntimeError):
    """The training job ended in ERROR or CANCELLED; the message carries its last log lines.

    `resumable` is False when the job was stopped on purpose (the loss watchdog, a cancel):
    resuming it would pay for the same failure again.
    """

    resumable: bool = True
    running_seconds: float | None = None


class JobUnreachable(RuntimeError):
    """The job's state could not be read, time after time: the monitor stops instead of polling forever."""


def parse_progress_line(line: str) -> ProgressUpdate | None:
    """The progress record in a log line, or None when the line is not one."""
    idx = line.find(PROGRESS_PREFIX)
    if idx < 0:
        return None
    try:
        return ProgressUpdate.model_validate(json.loads(line[idx + len(PROGRESS_PREFIX) :]))
    except ValueError:
        return None


def parse_result_line(line: str) -> dict | None:
    """The result record in a log line, or None when the line is not one."""
    idx = line.find(RESULT_PREFIX)
    if idx < 0:
        return None
    try:
        return json.loads(line[idx + len(RESULT_PREFIX) :])
    except ValueError:
        return None


def parse_stopped_line(line: str) -> dict | None:
    """The record of a run the script stopped itself (watchdog, SIGTERM), or None."""
    idx = line.find(STOPPED_PREFIX)
    if idx < 0:
        return None
    try:
        return json.loads(line[idx + len(STOPPED_PREFIX) :])
    except ValueError:
        return None
