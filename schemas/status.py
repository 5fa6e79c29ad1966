"""The live status of a pipeline run, as data: stage, budget gate, training progress, cost, links.

The `finetune` flow keeps one `RunStatus` per flow run and publishes every change twice: as the
run's one status artifact (key `STATUS_ARTIFACT_KEY`, updated in place; the Prefect UI shows it
on the run's page) and as a Prefect event named `lmft.finetune.<part>` whose resource is the flow
run (automations and subscribers react to those). The MCP adapter, `lmft status`, `lmft run` and
the run's summary read this model back; nobody parses log lines for it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum

from pydantic import BaseModel, Field

from schemas.costs import CostEstimate

STATUS_ARTIFACT_KEY = "run-status"
"""Key of the artifact holding a run's `RunStatus` (one per flow run, updated in place)."""
STATUS_ARTIFACT_TYPE = "run-status"
"""Its artifact type: the data is `RunStatus` JSON (the UI shows it as such), the description the card."""
STATUS_EVENT_PREFIX = "lmft.finetune."
"""Events: `lmft.finetune.stage`, `.gate`, `.progress`, `.cost`, `.links`; payload: the whole status."""


class Stage(str, Enum):
    """Where a run is in the pipeline."""

    STARTING = "starting"
    PREPARING = "preparing"  # materialising the base model
    VALIDATING = "validating"
    ESTIMATING = "estimating"
    BUDGET = "budget"  # the budget gate: may wait for an approval
    TRAINING = "training"
    SAMPLING = "sampling"  # answers of the base and the fine-tuned model
    CONVERTING = "converting"  # GGUF + quality gate
    PROMOTING = "promoting"  # candidate vs the served model and the base (promotion: if_better)
    DEPLOYING = "deploying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STAGES = (Stage.COMPLETED, Stage.FAILED, Stage.CANCELLED)


class GateDecision(str, Enum):
    """The budget gate's verdict."""

    NOT_REACHED = "not_reached"
    NOT_REQUIRED = "not_required"  # free, or under the approval threshold: let through
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"  # nobody decided in time: a rejection

    @property
    def lets_through(self) -> bool:
        return self in (GateDecision.NOT_REQUIRED, GateDecision.APPROVED)

    @property
    def stops(self) -> bool:
        return self in (GateDecision.REJECTED, GateDecision.TIMED_OUT)


class BudgetGate(BaseModel):
    """The estimate and what the budget gate made of it."""

    decision: GateDecision = GateDecision.NOT_REACHED
    estimate: CostEstimate | None = Field(
        default=None, description="The run's cost estimate, once it has one."
    )
    reserved_usd: float | None = Field(
        default=None, description="USD held in the budget ledger for this run."
    )
    timeout_seconds: int | None = Field(
        default=None, description="While awaiting approval: the run is rejected after this long."
    )
    approver: str | None = None
    note: str | None = None


class TrainingProgress(BaseModel):
    """How far the training job is, from the job's own progress records."""

    job_id: str | None = None
    backend: str | None = None
    job_state: str | None = Field(
        default=None, description="scheduling, running, completed, error or cancelled."
    )
    percent: float | None = Field(default=None, ge=0, le=100)
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = Field(default=None, description="Training loss at `step`.")
    eval_loss: float | None = Field(
        default=None, description="Loss on the eval split, at its last evaluation."
    )
    eval_step: int | None = Field(default=None, description="The step of that evaluation.")
    base_eval_loss: float | None = Field(
        default=None, description="The base model's eval loss on the same rows, before training."
    )
    best_step: int | None = Field(
        default=None,
        description="The evaluated step with the lowest eval loss; once training ended, the "
        "checkpoint the saved model comes from (null: the last step's weights are kept).",
    )
    best_eval_loss: float | None = Field(
        default=None, description="The eval loss at `best_step`: the saved model's, once trained."
    )
    learning_rate: float | None = None
    epoch: float | None = None
    eta_seconds: float | None = None

    def with_evaluation(
        self, step: int, eval_loss: float, base_eval_loss: float | None = None
    ) -> TrainingProgress:
        """This progress after an evaluation at `step` (step 0: the base model, before training)."""
        update: dict = {"eval_loss": eval_loss, "eval_step": step}
        base = eval_loss if step == 0 else base_eval_loss
        if base is not None:
            update["base_eval_loss"] = base
        if step > 0 and (self.best_eval_loss is None or eval_loss < self.best_eval_loss):
            update.update(best_step=step, best_eval_loss=eval_loss)
        return self.model_copy(update=update)


class RunLinks(BaseModel):
    """Where to look: job page, dashboards, the model and what was made of it."""

    hf_job: str | None = Field(default=None, description="The Hugging Face job page.")
    trackio: str | None = Field(default=None, description="The Trackio dashboard.")
    model: str | None = Field(
        default=None, description="The trained model: a folder or a Hub repo id."
    )
    gguf: str | None = Field(default=None, description="The GGUF that passed the quality gate.")
    gguf_repo: str | None = Field(default=None, description="The GGUF repository on the Hub.")
    pull_request: str | None = Field(
        default=None, description="The serverless-llm pull request of the deployment."
    )
    serving: str | None = Field(
        default=None, description="Where the model answers (OpenAI-compatible base URL)."
    )


class RunStatus(BaseModel):
    """A pipeline run's state as data: the same for the UI, the MCP adapter and the CLI."""

    flow_run_id: str
    flow: str = Field(description="The flow that publishes it: finetune, convert, deploy, ...")
    stage: Stage = Stage.STARTING
    gate: BudgetGate = BudgetGate()
    training: TrainingProgress | None = None
    cost_so_far_usd: float | None = Field(
        default=None,
        description="Training spend so far: running time × the hardware's price (0 when local).",
    )
    links: RunLinks = RunLinks()
    step_seconds: dict[str, float] = Field(
        default={}, description="Wall time of each finished stage."
    )
    message: str | None = Field(
        default=None, description="Why the run ended as it did, when it failed or was stopped."
    )
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def is_final(self) -> bool:
        return self.stage in FINAL_STAGES
