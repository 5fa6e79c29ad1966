"""The `finetune` flow: validate → estimate → gate → train → monitor → GGUF + quality gate → deploy."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.convert import convert
from schemas.request import Backend, FineTuneRequest
from tasks.cancellation import watch_for_cancellation
from tasks.costs.budget import gate_budget, release_budget_of_flow_run
from tasks.gguf import lineage_for_request
from tasks.gguf.held_out import held_out_dataset, held_out_split
from tasks.gguf.publish import gguf_hub_target
from tasks.gguf.quality import quality_markdown
from tasks.jobs.base_model import prepare_base_model
from tasks.jobs.hooks import cancel_job_of_flow_run
from tasks.jobs.resume import estimate_from, find_start_checkpoint, train_resuming
from tasks.reporting.samples import sample_answers
from tasks.reporting.summary import FineTuneSummary, publish_estimate, publish_summary, timed
from tasks.serving.deploy import deploy_gguf
from tasks.validation import raise_on_errors, validate_dataset, validate_eval_dataset


@flow(
    name="finetune",
    on_running=[watch_for_cancellation],
    on_cancellation=[cancel_job_of_flow_run, release_budget_of_flow_run],
    on_failure=[release_budget_of_flow_run],
    on_crashed=[release_budget_of_flow_run],
    log_prints=True,
)
def finetune(request: FineTuneRequest, idempotency_key: str | None = None) -> FineTuneSummary:
    """Fine-tune `request.base_model` on `request.dataset`; one training job per idempotency key."""
    logger = get_run_logger()
    key = idempotency_key or f"flow-run-{flow_run.id}"
    timings: dict[str, float] = {}
    with timed(timings, "prepare model"):
        model = prepare_base_model(request)
    with timed(timings, "validate"):
        report = validate_dataset(request, tokenizer_path=model)
        raise_on_errors(report)
        raise_on_errors(
            validate_eval_dataset(request, tokenizer_path=model), field="evaluation.eval_dataset"
        )
        start = find_start_checkpoint(request)
    with timed(timings, "estimate"):
        estimate = estimate_from(request, report, start)
        publish_estimate(estimate)
    with timed(timings, "budget"):
        reservation = gate_budget(estimate, run_key=key)
    with timed(timings, "train"):
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
    samples = gguf = deployment = None
    if result.model_dir:  # the model is on this machine: show what training changed
        with timed(timings, "sample answers"):
            samples = sample_answers(model, result.model_dir)
    if request.gguf is not None:
        with timed(timings, "gguf"):
            lineage = lineage_for_request(request, str(flow_run.id))
            gguf = convert(
                result.model_dir or result.hub_repo,
                lineage=lineage,
                settings=request.gguf,
                dataset=held_out_dataset(request),
                held_out_split=held_out_split(request),
                hub=gguf_hub_target(
                    request.output_name, remote=request.backend is not Backend.LOCAL
                ),
            )
        if request.deploy is not None:
            with timed(timings, "deploy"):
                deployment = deploy_gguf(
                    gguf.chosen,
                    request.deploy.name or request.output_name,
                    request.deploy.target,
                    quality_report_md=quality_markdown(gguf.quality),
                    lineage=lineage.model_dump(mode="json"),
                )
    summary = publish_summary(
        request, result, estimate, timings, samples, gguf=gguf, deployment=deployment
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
