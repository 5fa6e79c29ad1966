"""Records of the model registry: every trained model, how good it is, and where it serves.

The registry lives in the same SQL database as the budget ledger (`tasks.registry`); these are
the shapes it reads and writes, the promotion gate's verdict, and what the `models` flow returns.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum
from typing import Annotated

from pydantic import BaseModel, Field


class Promotion(str, Enum):  # noqa: UP042  (STYLE.md: fixed sets are (str, Enum))
    """When a newly trained model replaces the one served under its name."""

    ALWAYS = "always"
    """Deploy whatever passed the GGUF quality gate (the `finetune` default)."""
    IF_BETTER = "if_better"
    """Deploy only when it beats the served model by the margin and is not worse than the base
    model, on the same held-out rows, with the GGUF files users would get (the `retrain` default)."""
    NEVER = "never"
    """Train, convert and register; never deploy."""


PromotionMargin = Annotated[
    float,
    Field(
        ge=0,
        le=10,
        description="if_better: how much lower (nats/token) the candidate's mean NLL on the held-out "
        "rows must be than the served model's.",
    ),
]


ModelQuery = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=200,
        description="A model's name (output name or served name) or registry id; empty: every model.",
        examples=["smollm2pirate"],
    ),
]
"""The `models` flow's parameter (the MCP tool `get_model` takes the same)."""


class PromptAnswer(BaseModel):
    """One quality prompt and a model's greedy answer to it."""

    prompt: str
    text: str
    degenerate: str | None = None


class ModelEvaluation(BaseModel):
    """One GGUF scored on the held-out rows through llama-cpp-python."""

    role: str = Field(description="candidate, incumbent or base.")
    model_id: str | None = Field(default=None, description="Registry entry, when it has one.")
    gguf_path: str
    mean_nll: float | None = Field(
        default=None, description="Mean negative log-likelihood per token of the held-out rows."
    )
    tokens: int = 0
    answers: list[PromptAnswer] = []
    error: str | None = Field(default=None, description="Why it could not be evaluated.")


class PromotionDecision(BaseModel):
    """Whether the candidate is deployed, and the figures that decided it."""

    promotion: Promotion
    deploy: bool
    reason: str
    margin: float
    held_out_texts: int = 0
    candidate: ModelEvaluation | None = None
    incumbent: ModelEvaluation | None = None
    base: ModelEvaluation | None = None


class RegisteredVariant(BaseModel):
    """One GGUF file of a registered model and how it did in the quality gate."""

    quant_type: str
    path: str
    size_bytes: int
    mean_nll: float | None = None
    delta_nll: float | None = None
    passed: bool | None = None
    chosen: bool = False


class DeploymentEvent(BaseModel):
    """One deploy of a registered model (or a rollback to it)."""

    id: str
    model_id: str | None = Field(
        description="Registry entry deployed; null for an unregistered file."
    )
    target: str
    name: str = Field(description="Model name users ask the server for.")
    status: str
    gguf_path: str
    url: str | None = None
    pull_request_url: str | None = None
    commit_sha: str | None = None
    hf_repo: str | None = None
    hf_file: str | None = None
    deployed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    deployed_by: str = ""
    flow_run_id: str | None = None
    replaced_model_id: str | None = Field(
        default=None, description="The model that served under this name before."
    )
    rollback: bool = False


class RegisteredModel(BaseModel):
    """A trained model: where it came from, what it cost, how good it is, where it serves."""

    id: str = Field(description="Registry entry id: the `finetune` flow run that trained it.")
    name: str = Field(description="The request's output_name.")
    base_model: str
    dataset: str
    dataset_sha256: str | None = None
    method: str
    flow_run_id: str
    parent_flow_run_id: str | None = Field(
        default=None, description="The `retrain` run that started it, if one did."
    )
    jobs: list[str] = []
    cost_usd: float | None = None
    steps: int | None = None
    final_loss: float | None = None
    base_eval_loss: float | None = None
    eval_loss: float | None = None
    model_path: str | None = Field(default=None, description="Model folder or Hub repo.")
    gguf_path: str | None = Field(default=None, description="The GGUF the quality gate chose.")
    variants: list[RegisteredVariant] = []
    request: dict = Field(default_factory=dict, description="The FineTuneRequest, as JSON.")
    promotion: PromotionDecision | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    deployments: list[DeploymentEvent] = Field(
        default=[], description="Every deploy of this model, oldest first."
    )
    serving: list[str] = Field(default=[], description="Where it serves now, as 'target/name'.")

    def lineage(self) -> dict:
        """Where it came from, as a deploy's pull request shows it."""
        return {
            "registry_id": self.id,
            "base_model": self.base_model,
            "dataset": self.dataset,
            "dataset_sha256": self.dataset_sha256,
            "method": self.method,
            "pipeline_run_id": self.flow_run_id,
            "eval_loss": self.eval_loss,
        }

    def file_to_deploy(self, target: str) -> str | None:
        """What to deploy it from on `target`: the Hub file an earlier deploy there uploaded, else
        its chosen GGUF on the worker."""
        for event in reversed(self.deployments):
            if event.target == target and event.hf_repo and event.hf_file:
                return f"hf://{event.hf_repo}/{event.hf_file}"
        return self.gguf_path


class ModelRegistryView(BaseModel):
    """What the `models` flow returns: registered models, newest first."""

    database: str = Field(description="Where the registry lives (no credentials).")
    models: list[RegisteredModel] = []
