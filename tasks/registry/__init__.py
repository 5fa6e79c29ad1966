"""The model registry: every trained model, its lineage, its figures and where it serves.

`ModelRegistry` (`tasks.registry.store`) is the store; the tasks here are what the flows call:
register a model, record a deploy, find what serves under a name (the incumbent) and what a
rollback redeploys. Each change publishes the registry as a Prefect table artifact.
"""

from __future__ import annotations

import getpass

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run as current_flow_run

from blocks.budget import BudgetPolicyMissing, load_budget_policy
from schemas.gguf import ConversionResult, GGUFLineage
from schemas.registry import (
    DeploymentEvent,
    ModelRegistryView,
    PromotionDecision,
    RegisteredModel,
    RegisteredVariant,
)
from schemas.request import FineTuneRequest
from schemas.serving import LOCAL_TARGET, ServedModel
from schemas.status import RunStatus
from tasks.costs.budget import ledger_for
from tasks.jobs import TrainingResult
from tasks.registry.store import ModelRegistry, rows_for_table

REGISTRY_ARTIFACT_KEY = "model-registry"

__all__ = [
    "ModelRegistry",
    "find_incumbent",
    "find_rollback",
    "model_registry",
    "publish_registry",
    "read_registry",
    "record_served",
    "register_model",
    "served_name",
]


def model_registry() -> ModelRegistry:
    """The registry in the budget ledger's database (the saved policy's URL, else
    `$LMFT_LEDGER_URL`, else SQLite in `$LMFT_HOME`)."""
    try:
        policy = load_budget_policy()
    except BudgetPolicyMissing:
        policy = None
    return ModelRegistry(ledger_for(policy).url)


def served_name(target: str, name: str) -> str:
    """The name a deploy of `name` serves under on `target` (the local server normalises it)."""
    if target == LOCAL_TARGET:
        from tasks.serving.local import local_name_for

        return local_name_for(name)
    return name


def deployer() -> str:
    """Who deploys: this flow run and the account it runs under."""
    run = current_flow_run.name or current_flow_run.id
    who = getpass.getuser()
    return f"{who} (flow run {run})" if run else who


def publish_registry(registry: ModelRegistry | None = None, *, change: str = "") -> str:
    """The registry as a table artifact (key `model-registry`); returns its description."""
    registry = registry or model_registry()
    rows = rows_for_table(registry.entries())
    description = f"{len(rows)} registered models ({registry.describe()})" + (
        f"; {change}" if change else ""
    )
    create_table_artifact(rows, key=REGISTRY_ARTIFACT_KEY, description=description)
    return description


def _variants(gguf: ConversionResult) -> list[RegisteredVariant]:
    checks = {c.path: c for c in (gguf.quality.reference, *gguf.quality.variants)}
    out = []
    for file in gguf.artifacts.all_files:
        check = checks.get(file.path)
        out.append(
            RegisteredVariant(
                quant_type=file.quant_type.value,
                path=file.path,
                size_bytes=file.size_bytes,
                mean_nll=check.mean_nll if check else None,
                delta_nll=check.delta_nll if check else None,
                passed=check.passed if check else None,
                chosen=file.path == gguf.chosen,
            )
        )
    return out


@task(name="register-model", timeout_seconds=300)  # the registry's database
def register_model(
    request: FineTuneRequest,
    result: TrainingResult,
    status: RunStatus,
    *,
    lineage: GGUFLineage,
    gguf: ConversionResult | None = None,
    promotion: PromotionDecision | None = None,
    parent_flow_run_id: str | None = None,
) -> RegisteredModel:
    """Record the model this `finetune` run trained (idempotent: keyed by the run)."""
    assert request.output_name is not None  # set by the request's validator
    run_id = str(current_flow_run.id)
    model = RegisteredModel(
        id=run_id,
        name=request.output_name,
        base_model=lineage.base_model,
        dataset=request.dataset.path,
        dataset_sha256=lineage.dataset_sha256,
        method=request.method.value,
        flow_run_id=run_id,
        parent_flow_run_id=parent_flow_run_id,
        jobs=[*result.earlier_jobs, result.handle.job_id],
        cost_usd=status.cost_so_far_usd,
        steps=result.global_step,
        final_loss=result.final_loss,
        base_eval_loss=result.base_eval_loss,
        eval_loss=result.eval_loss,
        model_path=result.model_dir or result.hub_repo,
        gguf_path=gguf.chosen if gguf else None,
        variants=_variants(gguf) if gguf else [],
        request=request.model_dump(mode="json"),
        promotion=promotion,
    )
    registry = model_registry()
    registered = registry.register(model)
    publish_registry(registry, change=f"registered {model.name} ({model.id})")
    return registered


@task(name="record-deployment", timeout_seconds=300)  # the registry's database
def record_served(
    deployment: ServedModel, model_id: str | None, *, rollback: bool = False
) -> DeploymentEvent:
    """Record a deploy in the registry: which model, where, by whom, and what it replaced."""
    registry = model_registry()
    if model_id is None:  # a file deployed by hand: name its model when it is a registered one
        known = registry.model_of_file(deployment.gguf_path)
        model_id = known.id if known else None
    event = registry.record_deployment(
        deployment,
        model_id=model_id,
        deployed_by=deployer(),
        flow_run_id=str(current_flow_run.id) if current_flow_run.id else None,
        rollback=rollback,
    )
    what = "rolled back to" if rollback else "deployed"
    replaced = f", replacing {event.replaced_model_id}" if event.replaced_model_id else ""
    publish_registry(
        registry,
        change=f"{what} {model_id or deployment.gguf_path} as {event.target}/{event.name}{replaced}",
    )
    return event


@task(name="find-incumbent", timeout_seconds=300)  # the registry's database
def find_incumbent(target: str, name: str) -> tuple[DeploymentEvent, RegisteredModel | None] | None:
    """What serves under `name` on `target` now, and its registry entry (None: nothing serves)."""
    registry = model_registry()
    current = registry.serving(target, served_name(target, name))
    if current is None:
        return None
    return current, registry.get(current.model_id) if current.model_id else None


@task(name="find-rollback", timeout_seconds=300)  # the registry's database
def find_rollback(target: str, name: str) -> RegisteredModel:
    """The registered model a rollback of `name` on `target` redeploys (what the served one replaced)."""
    _, previous = model_registry().rollback_target(target, served_name(target, name))
    if not previous.file_to_deploy(target):
        raise LookupError(f"rollback: registered model {previous.id} has no GGUF to deploy")
    return previous


@task(name="read-model-registry", timeout_seconds=300)  # the registry's database
def read_registry(name: str | None = None) -> ModelRegistryView:
    """Every registered model (newest first), or the entries of one name or id."""
    registry = model_registry()
    found = registry.find(name) if name else registry.entries()
    if name and not found:
        raise LookupError(
            f"name: no model named {name!r} (nor with that registry id) in the registry at "
            f"{registry.describe()}; `lmft models list` shows what is registered"
        )
    return ModelRegistryView(database=registry.describe(), models=found)
