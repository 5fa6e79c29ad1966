"""Artifacts that summarise a pipeline run in the Prefect UI."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from schemas.costs import CostEstimate
from schemas.gguf import ConversionResult
from schemas.registry import PromotionDecision, RegisteredModel
from schemas.request import FineTuneRequest
from schemas.serving import ServedModel
from schemas.status import RunLinks, RunStatus
from tasks.jobs import TrainingResult
from tasks.reporting.samples import SampleAnswer


class FineTuneSummary(BaseModel):
    """What the `finetune` flow returns."""

    output_name: str
    job_id: str
    model_dir: str | None
    hub_repo: str | None = None
    steps: int
    first_loss: float | None
    final_loss: float | None
    base_eval_loss: float | None = Field(
        default=None, description="Eval loss of the base model on the held-out rows."
    )
    eval_loss: float | None = Field(
        default=None, description="Eval loss of the fine-tuned model (its best checkpoint)."
    )
    best_step: int | None = Field(default=None, description="The step the saved model is from.")
    stopped_early: bool = False
    jobs: list[str] = Field(default=[], description="Training jobs, in order (resumed ones too).")
    step_seconds: dict[str, float]
    trackio_project: str
    estimate: CostEstimate | None
    cost_usd: float | None = Field(
        default=None, description="What the training cost: running time × the hardware's price."
    )
    links: RunLinks = RunLinks()
    samples: list[SampleAnswer] = []
    gguf: str | None = Field(default=None, description="The GGUF that passed the quality gate.")
    gguf_decision: str | None = Field(
        default=None, description="Which GGUF variant was chosen, and why."
    )
    deployment_url: str | None = Field(
        default=None, description="Where the model answers (OpenAI-compatible)."
    )
    deployment_status: str | None = None
    registry_id: str | None = Field(
        default=None, description="The model's entry in the model registry (`lmft models show`)."
    )
    promotion: PromotionDecision | None = Field(
        default=None, description="Whether the model was deployed, and the figures that decided it."
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _cost(summary: FineTuneSummary) -> str:
    spent = "n/a" if summary.cost_usd is None else f"${summary.cost_usd:.2f}"
    if summary.estimate is None:
        return spent
    return f"{spent} (estimated ${summary.estimate.expected_usd:.2f}, {summary.estimate.source})"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def eval_row(result: TrainingResult) -> str:
    """Base model vs fine-tuned eval loss, and which step the saved model is from."""
    if result.eval_loss is None:
        return "not evaluated"
    text = f"base {_fmt(result.base_eval_loss)} → fine-tuned {_fmt(result.eval_loss)}"
    if result.best_step is not None:
        text += f" (best checkpoint: step {result.best_step} of {result.global_step}"
        text += ", stopped early)" if result.stopped_early else ")"
    if result.base_eval_loss is not None and result.eval_loss >= result.base_eval_loss:
        text += "; no better than the base model on held-out rows"
    if result.resumed_from_step:
        text += f"; resumed from step {result.resumed_from_step}"
    return text


@task(name="publish-summary")
def publish_summary(
    request: FineTuneRequest,
    result: TrainingResult,
    status: RunStatus,
    samples: list[SampleAnswer] | None = None,
    *,
    gguf: ConversionResult | None = None,
    deployment: ServedModel | None = None,
    registered: RegisteredModel | None = None,
    promotion: PromotionDecision | None = None,
) -> FineTuneSummary:
    """Build the run's summary from its result and its published status; publish it as markdown."""
    estimate, timings = status.gate.estimate, status.step_seconds
    summary = FineTuneSummary(
        output_name=request.output_name or result.handle.job_id,
        job_id=result.handle.job_id,
        model_dir=result.model_dir,
        hub_repo=result.hub_repo,
        steps=result.global_step,
        first_loss=result.first_loss,
        final_loss=result.final_loss,
        base_eval_loss=result.base_eval_loss,
        eval_loss=result.eval_loss,
        best_step=result.best_step,
        stopped_early=result.stopped_early,
        jobs=[*result.earlier_jobs, result.handle.job_id],
        step_seconds=timings,
        trackio_project=result.trackio_project,
        estimate=estimate,
        cost_usd=status.cost_so_far_usd,
        links=status.links,
        samples=samples or [],
        gguf=gguf.chosen if gguf else None,
        gguf_decision=gguf.quality.decision if gguf else None,
        deployment_url=deployment.url or deployment.pull_request_url if deployment else None,
        deployment_status=deployment.status.value if deployment else None,
        registry_id=registered.id if registered else None,
        promotion=promotion,
    )
    rows = "\n".join(f"| {step} | {seconds:.1f} |" for step, seconds in timings.items())
    markdown = f"""# Fine-tune: {summary.output_name}

| | |
|---|---|
| base model | `{request.base_model}` |
| dataset | `{request.dataset.path}` |
| method | {request.method.value} ({f"LoRA r={request.lora.r}" if request.lora.enabled else "full"}) |
| backend | {request.backend.value} (job {", ".join(f"`{j}`" for j in summary.jobs)}) |
| model | `{result.model_dir or result.hub_repo}` |
| steps | {result.global_step} |
| loss | {_fmt(result.first_loss)} → {_fmt(result.final_loss)} |
| eval loss (held out) | {eval_row(result)} |
| cost | {_cost(summary)} |
| Trackio | project `{result.trackio_project}`: `trackio show --project {result.trackio_project}` |
| GGUF | `{summary.gguf or "not converted"}` {_cell(summary.gguf_decision or "")} |
| promotion | {_cell(promotion.reason) if promotion else "n/a (not deployed)"} |
| deployment | {summary.deployment_status or "not deployed"} {summary.deployment_url or ""} |
| registry entry | `{summary.registry_id or "n/a"}` (`lmft models show {summary.output_name}`) |

## Wall time per step (s)
| step | seconds |
|---|---|
{rows}
"""
    links = [f"| {name.replace('_', ' ')} | {url} |" for name, url in summary.links if url]
    if links:
        markdown += "\n## Links\n| | |\n|---|---|\n" + "\n".join(links) + "\n"
    if summary.samples:
        markdown += (
            "\n## Answers before and after\n| prompt | base model | fine-tuned |\n|---|---|---|\n"
        )
        markdown += "\n".join(
            f"| {_cell(a.prompt)} | {_cell(a.base)} | {_cell(a.tuned)} |" for a in summary.samples
        )
    create_markdown_artifact(
        markdown, key="finetune-summary", description=f"Fine-tune {summary.output_name}"
    )
    return summary
