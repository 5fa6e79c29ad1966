"""The lm-fine-tuning MCP server: tools that start and steer Prefect flow runs.

This file only declares the tools; each body is one call into the glue modules:
`mcp_adapter.start` (tools that start flow runs), `mcp_adapter.status` (tools that read them),
`mcp_adapter.control` (approve, reject, cancel). A tool that starts a flow takes the flow's own
parameter types (`tests/mcp_adapter/test_contract.py` holds them equal) and names the deployment
it starts in its `meta`.
Run it with `lmft mcp` (stdio) or `lmft mcp --http` (streamable HTTP, bearer token).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastmcp import Context, FastMCP
from mcp.types import ToolAnnotations
from pydantic import Field

from mcp_adapter import control, start, status
from mcp_adapter.models import (
    ApprovalResult,
    CancelResult,
    CostsResult,
    EstimateResult,
    JobCreated,
    JobList,
    JobLogs,
    JobStatus,
    ModelsResult,
    RunStarted,
    RunState,
    ValidationResult,
)
from mcp_adapter.runs import flow_parameters
from schemas.approval import ApprovalDecision
from schemas.flows import DeploymentName
from schemas.gguf import GGUFSettings, HubTarget, ModelSource
from schemas.registry import ModelQuery
from schemas.request import DatasetSource, FineTuneRequest
from schemas.serving import LOCAL_TARGET, DeployTarget, GGUFLocation, ServedName

INSTRUCTIONS = """\
Fine-tune language models with Prefect flows. Typical order: validate_dataset → estimate_cost →
create_job → get_job_status (poll) → approve_job or reject_job when the job waits for approval →
convert_to_gguf → deploy_model; list_models / get_model read the model registry (where each model
came from, how good it is, where it serves); deploy_model with rollback restores the previous one. Every tool that does work starts a Prefect flow run; each result
carries the run's id and its Prefect UI link. A result with `error` set did not do what was asked:
read the error, it says what to do. Jobs on the 'hf-jobs' backend spend money.
"""

server = FastMCP("lm-fine-tuning", instructions=INSTRUCTIONS, mask_error_details=True)

READ_ONLY = ToolAnnotations(
    readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False
)
SPENDS_MONEY = {"spends_money": True}


def starts(deployment: DeploymentName, **meta: object) -> dict[str, object]:
    """Tool meta naming the deployment the tool starts a run of."""
    return {"deployment": deployment.value, **meta}


Request = Annotated[
    FineTuneRequest,
    Field(
        description="What to fine-tune: base_model, dataset {path, split, column_map}, method, lora, "
        "hyperparameters, backend ('local' is free; 'hf-jobs' is billed), hardware, output_name.",
        examples=[
            {
                "dataset": {"path": "examples/pirate_chat.jsonl"},
                "hyperparameters": {"max_steps": 20},
            }
        ],
    ),
]
IdempotencyKey = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Same key, same run: a retried call returns the run the first call started. "
        "Omit to start a new run.",
        examples=["pirate-sft-2026-11-29"],
    ),
]
RunId = Annotated[UUID, Field(description="Flow run id, as returned by create_job or list_jobs.")]
QuickWait = Annotated[
    float,
    Field(ge=0, le=600, description="Seconds to wait for the run to finish before returning."),
]


@server.tool(annotations=READ_ONLY, meta=starts(DeploymentName.VALIDATE))
async def validate_dataset(
    request: Request,
    ctx: Context,
    idempotency_key: IdempotencyKey = None,
    wait_seconds: QuickWait = 120,
) -> ValidationResult:
    """Check the request's dataset for its training method (a `validate` flow run); free.

    Returns the validation report: detected format, errors with row numbers, warnings, a
    proposed column_map. Fix every error before create_job."""
    return await start.validate_dataset(
        flow_parameters(request=request),
        idempotency_key=idempotency_key,
        wait_seconds=wait_seconds,
        report_progress=ctx.report_progress,
    )


@server.tool(annotations=READ_ONLY, meta=starts(DeploymentName.ESTIMATE))
async def estimate_cost(
    request: Request,
    ctx: Context,
    idempotency_key: IdempotencyKey = None,
    wait_seconds: QuickWait = 120,
) -> EstimateResult:
    """Estimate what training the request will cost, in USD and time (an `estimate` flow run); free.

    The dataset is validated first: an invalid dataset gives an error listing the problems."""
    return await start.estimate_cost(
        flow_parameters(request=request),
        idempotency_key=idempotency_key,
        wait_seconds=wait_seconds,
        report_progress=ctx.report_progress,
    )


@server.tool(
    annotations=ToolAnnotations(
        title="Start a fine-tuning job (spends money on paid backends)",
        readOnlyHint=False,
        destructiveHint=True,
        idempotentHint=True,
        openWorldHint=True,
    ),
    meta=starts(DeploymentName.FINETUNE, **SPENDS_MONEY),
)
async def create_job(
    request: Request,
    ctx: Context,
    idempotency_key: IdempotencyKey = None,
    wait_seconds: Annotated[
        float,
        Field(ge=0, le=120, description="Seconds to wait for the run to reach its approval gate."),
    ] = 10,
) -> JobCreated:
    """Start a fine-tuning job (a `finetune` flow run) and return its run id and UI link.

    The run validates, estimates, then passes the budget gate: over-budget jobs fail before
    anything is spent, expensive ones pause until approve_job or reject_job (every job does,
    free local ones too, when the budget policy requires approval for all runs). The result says
    whether approval is required and gives the estimate once the run has one. Poll
    get_job_status afterwards. Pass an idempotency_key so a retried call cannot start a
    second paid job."""
    return await start.create_job(
        request,
        idempotency_key=idempotency_key,
        wait_seconds=wait_seconds,
        report_progress=ctx.report_progress,
    )


@server.tool(annotations=READ_ONLY)
async def get_job_status(run_id: RunId) -> JobStatus:
    """State of a run: stage, approval gate, training step/total, train and eval loss, ETA, cost so
    far, links (Hugging Face job, Trackio, GGUF, pull request, serving URL), summary, UI link."""
    return await status.job_status(run_id)


@server.tool(annotations=READ_ONLY)
async def list_jobs(
    states: Annotated[
        list[RunState] | None,
        Field(description="Only runs in these states.", examples=[["running", "paused"]]),
    ] = None,
    since: Annotated[
        datetime | None, Field(description="Only runs scheduled at or after this time (ISO 8601).")
    ] = None,
    limit: Annotated[int, Field(ge=1, le=200, description="Most runs to return.")] = 20,
) -> JobList:
    """Fine-tuning runs, newest first, filtered by state and start time."""
    return await status.list_jobs(states=states, since=since, limit=limit)


Note = Annotated[str, Field(max_length=2000, description="Why; recorded with the decision.")]
Approver = Annotated[
    str,
    Field(max_length=200, description="Who decides (name or e-mail); recorded with the decision."),
]


@server.tool(
    annotations=ToolAnnotations(
        title="Approve a paused job (lets it spend money)",
        readOnlyHint=False,
        destructiveHint=True,
        idempotentHint=False,
        openWorldHint=True,
    ),
    meta=SPENDS_MONEY,
)
async def approve_job(
    run_id: RunId, note: Note = "", approver: Approver = "assistant via MCP"
) -> ApprovalResult:
    """Approve a job that waits for approval (gate 'awaiting_approval'): training starts and is billed."""
    return await control.decide_approval(
        run_id, ApprovalDecision(decision="approve", note=note, approver=approver)
    )


@server.tool(
    annotations=ToolAnnotations(
        readOnlyHint=False, destructiveHint=True, idempotentHint=False, openWorldHint=False
    )
)
async def reject_job(
    run_id: RunId, note: Note = "", approver: Approver = "assistant via MCP"
) -> ApprovalResult:
    """Reject a job that waits for approval: the run stops without training and nothing is spent."""
    return await control.decide_approval(
        run_id, ApprovalDecision(decision="reject", note=note, approver=approver)
    )


@server.tool(
    annotations=ToolAnnotations(
        readOnlyHint=False, destructiveHint=True, idempotentHint=True, openWorldHint=True
    )
)
async def cancel_job(
    run_id: RunId,
    ctx: Context,
    wait_seconds: Annotated[
        float, Field(ge=0, le=120, description="Seconds to wait for Cancelled.")
    ] = 30,
) -> CancelResult:
    """Cancel a run; its training job (local process or Hugging Face job) is cancelled with it."""
    return await control.cancel_run(
        run_id, wait_seconds=wait_seconds, report_progress=ctx.report_progress
    )


@server.tool(annotations=READ_ONLY)
async def get_job_logs(
    run_id: RunId,
    lines: Annotated[int, Field(ge=1, le=1000, description="How many of the last lines.")] = 50,
) -> JobLogs:
    """The last log lines of a run (flow and task logs, oldest first; tokens redacted)."""
    return await status.run_logs(run_id, lines=lines)


@server.tool(
    annotations=ToolAnnotations(
        readOnlyHint=False, destructiveHint=False, idempotentHint=True, openWorldHint=True
    ),
    meta=starts(DeploymentName.CONVERT),
)
async def convert_to_gguf(
    model: ModelSource,
    settings: Annotated[
        GGUFSettings | None,
        Field(
            description="Quantized variants (quant_types, default Q4_K_M and Q8_0) and the quality "
            "gate: prompts every variant must answer, max_nll_increase over the f16 reference.",
            examples=[{"quant_types": ["Q4_K_M", "Q8_0"]}],
        ),
    ] = None,
    adapter: Annotated[
        str | None, Field(description="A LoRA adapter (folder or Hub id) to merge into the model.")
    ] = None,
    dataset: Annotated[
        DatasetSource | None,
        Field(description="Training data: held-out text to score the variants and for i-quants."),
    ] = None,
    hub: Annotated[
        HubTarget | None,
        Field(description="Upload the files to '{namespace}/{name}-GGUF' on the Hub."),
    ] = None,
    idempotency_key: IdempotencyKey = None,
) -> RunStarted:
    """Convert a trained model to GGUF and check the quantized files answer (a `convert` flow run).

    Returns at once; follow the run with get_job_status: its links.gguf is the file that passed
    the quality gate, to pass to deploy_model."""
    return await start.start_long_run(
        DeploymentName.CONVERT,
        flow_parameters(model=model, settings=settings, adapter=adapter, dataset=dataset, hub=hub),
        idempotency_key=idempotency_key,
    )


@server.tool(
    annotations=ToolAnnotations(
        title="Deploy a GGUF model (opens a pull request / starts a server)",
        readOnlyHint=False,
        destructiveHint=True,
        idempotentHint=True,
        openWorldHint=True,
    ),
    meta=starts(DeploymentName.DEPLOY),
)
async def deploy_model(
    gguf_path: Annotated[
        GGUFLocation | None,
        Field(
            description="A .gguf file on the worker or hf://owner/repo/file.gguf; null with rollback."
        ),
    ],
    name: ServedName,
    target: DeployTarget = LOCAL_TARGET,
    hf_repo: Annotated[
        str | None,
        Field(description="Hub repo to upload a GGUF on the worker to (serverless-llm)."),
    ] = None,
    rollback: Annotated[
        bool,
        Field(
            description="Redeploy the registered model that the one serving under `name` on "
            "`target` replaced (gguf_path: null)."
        ),
    ] = False,
    idempotency_key: IdempotencyKey = None,
) -> RunStarted:
    """Deploy a GGUF to serverless-llm or a local server (a `deploy` flow run); returns at once.

    With rollback true (and gguf_path null) it redeploys the previous registered model of that
    name on that target instead (see list_models). The run checks the model answers a chat
    request before it reports success; get_job_status then gives links.serving (local) or
    links.pull_request (serverless-llm). The model registry records every deploy."""
    parameters = flow_parameters(name=name, target=target, hf_repo=hf_repo, rollback=rollback)
    return await start.start_long_run(
        DeploymentName.DEPLOY,
        {"gguf_path": gguf_path, **parameters},
        idempotency_key=idempotency_key,
    )


@server.tool(annotations=READ_ONLY, meta=starts(DeploymentName.MODELS))
async def list_models(
    ctx: Context, idempotency_key: IdempotencyKey = None, wait_seconds: QuickWait = 120
) -> ModelsResult:
    """Every registered model, newest first (a `models` flow run): base model, dataset sha256,
    eval loss, cost, GGUF files and their quality, the promotion decision, and where each serves."""
    return await start.read_models(
        {},
        idempotency_key=idempotency_key,
        wait_seconds=wait_seconds,
        report_progress=ctx.report_progress,
    )


@server.tool(annotations=READ_ONLY, meta=starts(DeploymentName.MODELS))
async def get_model(
    ctx: Context,
    name: ModelQuery = None,
    idempotency_key: IdempotencyKey = None,
    wait_seconds: QuickWait = 120,
) -> ModelsResult:
    """The registry entries of one model name, newest first (a `models` flow run): lineage,
    figures, every deploy (by whom, what it replaced, rollbacks) and where each serves now."""
    return await start.read_models(
        flow_parameters(name=name),
        idempotency_key=idempotency_key,
        wait_seconds=wait_seconds,
        report_progress=ctx.report_progress,
    )


@server.tool(annotations=READ_ONLY, meta=starts(DeploymentName.COST_REPORT))
async def get_costs(
    ctx: Context,
    month: Annotated[
        str | None,
        Field(
            pattern=r"^\d{4}-(0[1-9]|1[0-2])$",
            description="YYYY-MM (UTC); default this month.",
            examples=["2026-11"],
        ),
    ] = None,
    idempotency_key: IdempotencyKey = None,
    wait_seconds: QuickWait = 120,
) -> CostsResult:
    """Month-to-date spend, open budget holds, each job's estimate beside its actual cost, budget
    left (a `cost_report` flow run)."""
    return await start.cost_report(
        flow_parameters(month=month),
        idempotency_key=idempotency_key,
        wait_seconds=wait_seconds,
        report_progress=ctx.report_progress,
    )
