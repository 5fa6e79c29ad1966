"""Submit the training job script for a request, and follow it to its end."""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from tasks.jobs import (
    JobHandle,
    JobState,
    TrainingFailed,
    TrainingResult,
    parse_progress_line,
    parse_result_line,
)
from tasks.jobs.backends import job_logs, job_status
from tasks.jobs.local import submit_local_job
from tasks.request import Backend, FineTuneRequest

TRACKIO_PROJECT = "lm-fine-tuning"


def training_script_args(request: FineTuneRequest, model: str, *, run_name: str) -> list[str]:
    """Command-line arguments of `training/train.py` for `request`, training `model`."""
    h, lora, data = request.hyperparameters, request.lora, request.dataset
    args = {
        "model_name_or_path": model,
        # The job runs in its own folder (or on another machine): local paths must be absolute.
        "dataset_path": str(Path(data.path).expanduser().resolve()) if data.is_local else data.path,
        "dataset_split": data.split,
        "column_map": json.dumps(data.column_map),
        "method": request.method.value,
        "use_lora": lora.enabled,
        "lora_r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "lora_target_modules": lora.target_modules,
        "num_train_epochs": h.epochs,
        "max_steps": h.max_steps or -1,
        "learning_rate": h.learning_rate,
        "per_device_train_batch_size": h.batch_size,
        "gradient_accumulation_steps": h.gradient_accumulation_steps,
        "max_length": h.max_length,
        "warmup_ratio": h.warmup_ratio,
        "seed": h.seed,
        "gradient_checkpointing": h.gradient_checkpointing,
        "beta": h.beta,
        "num_generations": h.num_generations,
        "max_completion_length": h.max_completion_length,
        "reward_functions": ",".join(h.reward_functions),
        "trackio_project": TRACKIO_PROJECT,
        "run_name": run_name,
    }
    if data.config:
        args["dataset_config"] = data.config
    if data.revision:
        args["dataset_revision"] = data.revision
    out: list[str] = []
    for key, value in args.items():
        out += [f"--{key}", str(value)]
    return out


@task(name="submit-training", retries=2, retry_delay_seconds=[5, 30])
def submit_training(request: FineTuneRequest, model: str, *, idempotency_key: str, labels: dict[str, str]) -> JobHandle:
    """Start the training job on the request's backend; an existing job with the same key is reused."""
    logger = get_run_logger()
    script_args = training_script_args(request, model, run_name=request.output_name or idempotency_key)
    if request.backend is Backend.LOCAL:
        handle = submit_local_job(script_args=script_args, idempotency_key=idempotency_key, labels=labels)
    else:
        raise RuntimeError(f"backend {request.backend.value!r} is not available yet; use backend 'local'")
    logger.info("training job %s on %s (log: %s)", handle.job_id, handle.backend.value, handle.url)
    return handle


@task(name="monitor-training")
def monitor_training(handle: JobHandle) -> TrainingResult:
    """Follow the job's log to its end: live progress artifact, loss in the logs, the final result."""
    logger = get_run_logger()
    artifact_id = create_progress_artifact(
        0.0, key=f"training-progress-{_artifact_key(handle.job_id)}", description=f"Training job {handle.job_id}"
    )
    tail: deque[str] = deque(maxlen=40)
    result: dict | None = None
    started = time.monotonic()
    for line in job_logs(handle, follow=True):
        tail.append(line)
        if (update := parse_progress_line(line)) is not None:
            update_progress_artifact(artifact_id, round(100 * update.fraction, 1))
            eta = "?" if update.eta_seconds is None else f"{update.eta_seconds:.0f}s"
            logger.info(
                "step %d/%d  loss %.4f  lr %.2e  eta %s",
                update.step, update.total_steps, update.loss or float("nan"), update.learning_rate or 0.0, eta,
            )
        elif (parsed := parse_result_line(line)) is not None:
            result = parsed
    status = job_status(handle)
    if status.state is not JobState.COMPLETED or result is None:
        last = "\n".join(list(tail)[-20:])
        reason = status.message or status.state.value
        raise TrainingFailed(f"training job {handle.job_id} ended {status.state.value} ({reason}); last log lines:\n{last}")
    update_progress_artifact(artifact_id, 100.0)
    return TrainingResult(
        handle=handle,
        model_dir=result.get("model_dir"),
        adapter_dir=result.get("adapter_dir"),
        hub_repo=result.get("hub_repo"),
        hub_revision=result.get("hub_revision"),
        global_step=result["global_step"],
        first_loss=result.get("first_loss"),
        final_loss=result.get("final_loss"),
        train_seconds=result.get("train_seconds", time.monotonic() - started),
        trackio_project=result.get("trackio_project", TRACKIO_PROJECT),
    )


def _artifact_key(value: str) -> str:
    # Artifact keys: lowercase letters, digits and dashes only.
    return "".join(c if c.isalnum() else "-" for c in value.lower())
