"""A worker process for the kill-and-resume test: submit (or attach) and monitor one HF job.

    python -m tests.tasks.jobs.hf_resume_child IDEMPOTENCY_KEY

Credentials come from LMFT_HF_NAMESPACE / HF_TOKEN / HF_ENDPOINT; Prefect from PREFECT_API_URL.
"""

from __future__ import annotations

import sys

from prefect import flow
from prefect.runtime import flow_run

from schemas.request import Backend, DatasetSource, FineTuneRequest
from tasks.costs import CostEstimate
from tasks.jobs.monitor import MonitorSettings
from tasks.jobs.training import monitor_training, submit_training

ESTIMATE = CostEstimate(
    backend=Backend.HF_JOBS,
    hardware="t4-small",
    price_per_hour=0.4,
    low_usd=0.1,
    expected_usd=0.2,
    high_usd=0.4,
    timeout_seconds=3600,
    source="test table",
)


@flow(name="resume-child")
def train(key: str) -> str:
    request = FineTuneRequest(
        dataset=DatasetSource(path="trl-lib/Capybara"),
        backend=Backend.HF_JOBS,
        output_name="smol-pirate",
        gguf=None,
        deploy=None,
    )
    handle = submit_training(
        request,
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        idempotency_key=key,
        labels={"flow_run_id": str(flow_run.id)},
        estimate=ESTIMATE,
    )
    settings = MonitorSettings(poll_seconds=0.2, metrics_seconds=0.5, log_grace_seconds=5)
    return monitor_training(handle, ESTIMATE, settings).hub_repo


if __name__ == "__main__":
    print("RESULT", train(sys.argv[1]), flush=True)
