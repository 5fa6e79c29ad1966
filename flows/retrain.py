"""The `retrain` flow: re-run a stored fine-tune request when its dataset changed.

The retrained model is registered; it replaces the served one only as the spec's `promotion`
says (default `if_better`: when it beats it on the same held-out rows), and the result's
`reason` says which it was.

Scheduled nightly by `prefect.yaml`; run it by hand with `python -m flows.retrain [spec_name]`.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.finetune import finetune
from tasks.retrain import (
    RetrainOutcome,
    RetrainResult,
    fingerprint_dataset,
    load_retrain_spec,
    record_retraining,
    trained_reason,
)


@flow(name="retrain", log_prints=True)
def retrain(spec_name: str = "default") -> RetrainResult:
    """Fine-tune the request stored in RetrainSpec `spec_name` unless its dataset is unchanged."""
    logger = get_run_logger()
    spec, request = load_retrain_spec(spec_name)
    fingerprint = fingerprint_dataset(request.dataset)
    if spec.last_fingerprint == fingerprint.token:
        reason = f"dataset unchanged: {request.dataset.path} is still {fingerprint.token}"
        logger.info("skipping retraining: %s", reason)
        return RetrainResult(
            outcome=RetrainOutcome.SKIPPED,
            reason=reason,
            spec_name=spec_name,
            fingerprint=fingerprint,
            previous_fingerprint=spec.last_fingerprint,
        )
    logger.info(
        "dataset %s changed (%s → %s): retraining",
        request.dataset.path,
        spec.last_fingerprint,
        fingerprint.token,
    )
    # Keyed by this run: when a worker hands the run over (rescheduled), it reattaches to its job.
    summary = finetune(request, idempotency_key=f"retrain-{flow_run.id}")
    record_retraining(spec_name, fingerprint, summary, flow_run_id=str(flow_run.id))
    return RetrainResult(
        outcome=RetrainOutcome.TRAINED,
        reason=trained_reason(fingerprint, summary),
        spec_name=spec_name,
        fingerprint=fingerprint,
        previous_fingerprint=spec.last_fingerprint,
        summary=summary,
    )


if __name__ == "__main__":
    import sys

    print(retrain(sys.argv[1] if len(sys.argv) > 1 else "default").model_dump_json(indent=2))
