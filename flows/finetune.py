"""The `finetune` flow: validate → estimate → train → monitor → GGUF + quality gate → summarise."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.convert import convert
from tasks.base_model import prepare_base_model
from tasks.costs import estimate_cost
from tasks.gguf import lineage_for_request
from tasks.jobs.hooks import cancel_job_of_flow_run
from tasks.reporting import FineTuneSummary, publish_summary, timed
from tasks.request import FineTuneRequest
from tasks.training import monitor_training, submit_training
from tasks.validation import raise_on_errors, validate_dataset


@flow(name="finetune", on_cancellation=[cancel_job_of_flow_run], log_prints=True)
def finetune(request: FineTuneRequest, idempotency_key: str | None = None) -> FineTuneSummary:
    """Fine-tune `request.base_model` on `request.dataset`; one training job per idempotency key."""
    logger = get_run_logger()
    key = idempotency_key or f"flow-run-{flow_run.id}"
    timings: dict[str, float] = {}
    with timed(timings, "validate"):
        report = validate_dataset(request)
        raise_on_errors(report)
    with timed(timings, "estimate"):
        estimate = estimate_cost(request, report)
    with timed(timings, "prepare model"):
        model = prepare_base_model(request)
    with timed(timings, "train"):
        handle = submit_training(request, model, idempotency_key=key, labels={"flow_run_id": str(flow_run.id)})
        result = monitor_training(handle)
    with timed(timings, "gguf"):
        gguf = convert(result.model_dir or result.hub_repo, lineage=lineage_for_request(request, str(flow_run.id)), dataset=request.dataset)
    summary = publish_summary(request, result, estimate, timings)
    logger.info("GGUF to deploy: %s (%s)", gguf.chosen, gguf.quality.decision)
    logger.info("model saved to %s (loss %s → %s)", result.model_dir, result.first_loss, result.final_loss)
    return summary


if __name__ == "__main__":
    import sys

    from tasks.request import DatasetSource

    finetune(FineTuneRequest(dataset=DatasetSource(path=sys.argv[1] if len(sys.argv) > 1 else "examples/pirate_chat.jsonl")))
