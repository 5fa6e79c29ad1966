"""The `finetune` flow: validate → estimate → gate → train → monitor → GGUF + quality gate →
promotion (vs the served model) → register → deploy.

Every stage, the budget gate, the training progress, the cost so far and the links are published
as the run's status (`schemas.status.RunStatus`: one artifact, plus `lmft.finetune.*` events).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.convert import convert
from schemas.request import Backend, FineTuneRequest
from schemas.status import Stage
from tasks.cancellation import watch_for_cancellation
from tasks.costs.budget import gate_budget, release_budget_of_flow_run
from tasks.gguf import lineage_for_request
from tasks.gguf.convert import run_output_dir
from tasks.gguf.held_out import held_out_dataset, held_out_split
from tasks.gguf.publish import gguf_hub_target
from tasks.gguf.quality import quality_markdown
from tasks.jobs.base_model import prepare_base_model
from tasks.jobs.guard import guard_this_flow_run
from tasks.jobs.hooks import cancel_job_of_flow_run
from tasks.jobs.resume import estimate_from, find_start_checkpoint, train_resuming
from tasks.preflight import preflight_request
from tasks.registry import record_served, register_model
from tasks.registry.promotion import promote_candidate
from tasks.reporting.samples import sample_answers
from tasks.reporting.status import (
    current_status,
    end_status,
    publish_estimate,
    publish_gguf,
    publish_served,
    stage,
)
from tasks.reporting.summary import FineTuneSummary, publish_summary
from tasks.serving.deploy import deploy_model
from tasks.validation import raise_on_errors, validate_dataset, validate_eval_dataset


@flow(
    name="finetune",
    on_running=[watch_for_cancellation],
    on_completion=[end_status],
    on_cancellation=[cancel_job_of_flow_run, release_budget_of_flow_run, end_status],
    on_failure=[cancel_job_of_flow_run, release_budget_of_flow_run, end_status],
    on_crashed=[cancel_job_of_flow_run, release_budget_of_flow_run, end_status],
    log_prints=True,
    # A run waiting for approval (or for its deploy's merge) is suspended; resumed, it runs again
    # from the start on any worker, and its tasks (and theirs) return their persisted results instead of redoing the work.
    persist_result=True,
)
def finetune(request: FineTuneRequest, idempotency_key: str | None = None) -> FineTuneSummary:
    """Fine-tune `request.base_model` on `request.dataset`; one training job per idempotency key."""
    logger = get_run_logger()
    key = idempotency_key or f"flow-run-{flow_run.id}"
    guard_this_flow_run()  # ends the run, its jobs and its hold if this process is killed
    with stage(Stage.PREPARING):
        model = prepare_base_model(request)
        preflight_request(request, model)
    with stage(Stage.VALIDATING):
        report = validate_dataset(request, tokenizer_path=model)
        raise_on_errors(report)
        raise_on_errors(
            validate_eval_dataset(request, tokenizer_path=model), field="evaluation.eval_dataset"
        )
        start = find_start_checkpoint(request)
    with stage(Stage.ESTIMATING):
        estimate = estimate_from(request, report, start)
        publish_estimate(estimate)
    with stage(Stage.BUDGET):
        reservation = gate_budget(estimate, run_key=key)
    with stage(Stage.TRAINING):
        result = train_resuming(
            request,
            model,
            key=key,
            labels={"flow_run_id": str(flow_run.id)},
            estimate=estimate,
            report=report,
            reservation=reservation,
            start=start,
        )
    samples = gguf = deployment = decision = None
    if result.model_dir:  # the model is on this machine: show what training changed
        with stage(Stage.SAMPLING):
            samples = sample_answers(model, result.model_dir)
    # Set by the request's validator when omitted; a completed job has a model folder or a Hub repo.
    trained = result.model_dir or result.hub_repo
    assert request.output_name is not None and trained is not None
    lineage = lineage_for_request(request, str(flow_run.id), eval_loss=result.eval_loss)
    if request.gguf is not None:
        with stage(Stage.CONVERTING):
            remote = request.backend is not Backend.LOCAL
            gguf = convert(
                trained,
                lineage=lineage,
                settings=request.gguf,
                dataset=held_out_dataset(request),
                held_out_split=held_out_split(request),
                hub=gguf_hub_target(request.output_name, remote=remote),
                output_dir=run_output_dir(request.output_name, str(flow_run.id)),
            )
            publish_gguf(gguf)
        if request.deploy is not None:
            with stage(Stage.PROMOTING):  # candidate vs the served model and the base (if_better)
                decision = promote_candidate(request, model, result, gguf)
    registered = register_model(
        request,
        result,
        current_status(),
        lineage=lineage,
        gguf=gguf,
        promotion=decision,
        parent_flow_run_id=flow_run.parent_flow_run_id,
    )
    if gguf is not None and request.deploy is not None and decision and decision.deploy:
        with stage(Stage.DEPLOYING):
            deployment = deploy_model(
                gguf.chosen,
                request.deploy.name or request.output_name,
                request.deploy.target,
                quality_report_md=quality_markdown(gguf.quality),
                lineage=lineage.model_dump(mode="json"),
            )
            record_served(deployment, registered.id)
            publish_served(deployment)
    elif decision is not None:
        logger.info("not deployed: %s", decision.reason)
    summary = publish_summary(
        request,
        result,
        current_status(),
        samples,
        gguf=gguf,
        deployment=deployment,
        registered=registered,
        promotion=decision,
    )
    logger.info(
        "model saved to %s (loss %s → %s)", result.model_dir, result.first_loss, result.final_loss
    )
    return summary


if __name__ == "__main__":
    import sys

    from schemas.request import DatasetSource

    finetune(
        FineTuneRequest(
            dataset=DatasetSource(
                path=sys.argv[1] if len(sys.argv) > 1 else "examples/pirate_chat.jsonl"
            )
        )
    )
