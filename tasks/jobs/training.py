"""Submit the training job script for a request, and follow it to its end."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import cast
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)

from blocks.huggingface import load_hf_credentials
from schemas.jobs import ResumePoint, parse_stopped_line
from schemas.request import Backend, DatasetSource, FineTuneRequest
from schemas.status import RunLinks
from tasks.costs import CostEstimate
from tasks.jobs import (
    JobHandle,
    JobState,
    JobStatus,
    ProgressUpdate,
    TrainingFailed,
    TrainingResult,
)
from tasks.jobs.hf import GpuMetrics, is_transient, job_labels, label_value, submit_hf_job
from tasks.jobs.local import submit_local_job
from tasks.jobs.monitor import FollowOutcome, MonitorSettings, follow_job, running_cost
from tasks.reporting.status import (
    publish_cost,
    publish_evaluation,
    publish_links,
    publish_training,
)

TRACKIO_PROJECT = "lm-fine-tuning"
DEFAULT_SAVE_FRACTION = 0.25
"""Checkpoints (and, by default, evaluations) every quarter of the run unless
`checkpoints.save_steps` says otherwise: with the base model's evaluation, five evaluations per
run, which keeps their cost under 10 % of training (docs/training.md, benchmark); the
`save_minutes` checkpoints bound what a failure loses in wall time."""
HF_JOB_OUTPUT_DIR = (
    "/tmp/lmft-output"  # inside the job container; the model leaves it through the Hub
)


def training_script_args(request: FineTuneRequest, model: str, *, run_name: str) -> list[str]:
    """Command-line arguments of `training/train.py` for `request`, training `model`."""
    h, lora, data = request.hyperparameters, request.lora, request.dataset
    args: dict[str, object] = {
        "model_name_or_path": model,
        "dataset_path": _dataset_path(data),
        "dataset_split": data.split,
        "column_map": json.dumps(data.column_map),
        "method": request.method.value,
        "use_lora": lora.enabled,
        "lora_r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "lora_target_modules": lora.target_modules,
        "quantize": lora.quantize or "none",
        "num_train_epochs": h.epochs,
        "max_steps": h.max_steps or -1,
        "learning_rate": h.learning_rate,
        "per_device_train_batch_size": h.batch_size,
        "gradient_accumulation_steps": h.gradient_accumulation_steps,
        "max_length": h.max_length,
        "warmup_ratio": h.warmup_ratio,
        "seed": h.seed,
        "gradient_checkpointing": h.gradient_checkpointing,
        "loss_on": h.loss_on,
        "packing": "auto" if h.packing is None else str(h.packing).lower(),
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
    args.update(evaluation_script_args(request))
    out: list[str] = []
    for key, value in args.items():
        out += [f"--{key}", str(value)]
    return out


def _dataset_path(data: DatasetSource) -> str:
    # The job runs in its own folder (or on another machine): local paths must be absolute.
    return str(Path(data.path).expanduser().resolve()) if data.is_local else data.path


def evaluation_script_args(request: FineTuneRequest) -> dict[str, object]:
    """train.py's evaluation, checkpoint and watchdog arguments for `request`."""
    ev, ck, wd = request.evaluation, request.checkpoints, request.watchdog
    args: dict[str, object] = {
        "eval_ratio": ev.eval_ratio if ev else 0,
        "eval_max_rows": ev.eval_max_rows if ev else 1,
        "eval_steps": (ev.eval_steps or 0) if ev else 0,
        "early_stopping_patience": (ev.early_stopping_patience or 0) if ev else 0,
        "save_steps": ck.save_steps or DEFAULT_SAVE_FRACTION,
        "save_minutes": ck.save_minutes,
        "save_total_limit": ck.keep,
        "watchdog_factor": wd.divergence_factor,
        "watchdog_patience": wd.patience,
    }
    if ev is not None and (held_out := ev.eval_dataset) is not None:
        args["eval_dataset_path"] = _dataset_path(held_out)
        args["eval_dataset_split"] = held_out.split
        args["eval_column_map"] = json.dumps(held_out.column_map or request.dataset.column_map)
        if held_out.config:
            args["eval_dataset_config"] = held_out.config
        if held_out.revision:
            args["eval_dataset_revision"] = held_out.revision
    return args


def start_script_args(start: ResumePoint | None) -> list[str]:
    """Resume an unfinished run's checkpoint; continue a finished one from its adapter."""
    if start is None:
        return []
    flag = "--warm_start_from" if start.finished else "--resume_from_checkpoint"
    return [flag, start.checkpoint]


def is_transient_failure(task, task_run, state) -> bool:
    """Retry condition of the training tasks: only failures that another attempt can cure."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


SUBMIT_TIMEOUT_SECONDS = 1800
"""Submission uploads the script and a local dataset file to the Hub before the job starts."""


@task(
    name="submit-training",
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=is_transient_failure,
    timeout_seconds=SUBMIT_TIMEOUT_SECONDS,
)
def submit_training(
    request: FineTuneRequest,
    model: str,
    *,
    idempotency_key: str,
    labels: dict[str, str],
    estimate: CostEstimate | None = None,
    start: ResumePoint | None = None,
) -> JobHandle:
    """Start the training job on the request's backend; an existing job with the same key is reused.

    With `start`, the job resumes from (or, for a finished run, continues) that checkpoint.
    """
    logger = get_run_logger()
    script_args = training_script_args(
        request, model, run_name=request.output_name or idempotency_key
    ) + start_script_args(start)
    if request.backend is Backend.LOCAL:
        handle = submit_local_job(
            script_args=script_args, idempotency_key=idempotency_key, labels=labels
        )
        logger.info(
            "training job %s on %s (log: %s)", handle.job_id, handle.backend.value, handle.url
        )
        return handle
    check_shippable(request, model)
    credentials = load_hf_credentials()
    flavor, timeout = hf_flavor_and_timeout(request, estimate)
    hub_repo = f"{credentials.namespace}/{request.output_name}"
    script_args += [
        "--output_dir",
        HF_JOB_OUTPUT_DIR,
        "--push_to_hub_repo",
        hub_repo,
        "--hub_private",
        "True",
    ]
    if credentials.trackio_space_id:
        script_args += ["--trackio_space_id", credentials.trackio_space_id]
    job_label_set = {
        **{k: label_value(v) for k, v in labels.items()},
        **job_labels(
            idempotency_key=idempotency_key,
            flow_run_id=labels.get("flow_run_id"),
            estimated_usd=estimate.expected_usd if estimate else None,
        ),
    }
    handle, created = submit_hf_job(
        credentials,
        script_args=script_args,
        labels=job_label_set,
        flavor=flavor,
        timeout_seconds=timeout,
        quantized=request.lora.quantize is not None,
    )
    handle = handle.model_copy(update={"idempotency_key": idempotency_key})
    verb = "submitted" if created else "attached to existing"
    logger.info(
        "%s Hugging Face job %s on %s, pushing to %s: %s",
        verb,
        handle.job_id,
        flavor,
        hub_repo,
        handle.url,
    )
    return handle


def check_shippable(request: FineTuneRequest, model: str) -> None:
    """Refuse what a Hugging Face job cannot see: local folders (run_uv_job ships single files only)."""
    if Path(model).expanduser().is_dir():
        raise ValueError(
            f"base_model: {model!r} is a local folder, which a Hugging Face job cannot read; "
            "push it to the Hub and give its repo id, or use backend 'local'"
        )
    if request.dataset.is_local and Path(request.dataset.path).expanduser().is_dir():
        raise ValueError(
            f"dataset.path: {request.dataset.path!r} is a local folder, which a Hugging Face job cannot read; "
            "give a single file (it is uploaded with the job) or a Hub dataset id"
        )


def hf_flavor_and_timeout(
    request: FineTuneRequest, estimate: CostEstimate | None
) -> tuple[str, int | None]:
    """The flavor and timeout of a Hugging Face job: from the estimate, else from the request."""
    if estimate is not None and estimate.hardware not in ("local", "auto"):
        return estimate.hardware, estimate.timeout_seconds
    if request.hardware != "auto":
        return request.hardware, estimate.timeout_seconds if estimate else None
    raise ValueError(
        "hardware: backend 'hf-jobs' needs a flavor; set hardware (e.g. 'a10g-small') or pass a cost estimate"
    )


def evaluation_line(update: ProgressUpdate) -> str:
    """The monitor's log line for an evaluation (for people; the status carries the figures)."""
    line = f"eval loss {update.eval_loss:.4f} at step {update.step}/{update.total_steps}"
    if update.base_eval_loss is not None and update.step > 0:
        line += f" (base model {update.base_eval_loss:.4f})"
    return line


PUBLISH_SECONDS = 2.0
"""The run's status and progress bar take a progress record at most this often (and the last one)."""


class _PrefectWatcher:
    """Turns the monitor's notices into Prefect logs, the progress bar and the run's status."""

    def __init__(
        self,
        handle: JobHandle,
        artifact_id,
        price_per_hour: float | None,
        spent_before_usd: float = 0.0,
    ) -> None:
        self.handle, self.artifact_id, self.logger = handle, artifact_id, get_run_logger()
        self.price_per_hour, self.spent_before_usd = price_per_hour, spent_before_usd
        self.running_since: float | None = None
        self.latest: ProgressUpdate | None = None
        self.published_at = 0.0

    def on_stage(self, status: JobStatus, previous: JobState | None) -> None:
        was = previous.value if previous else "submitted"
        message = f" ({status.message})" if status.message else ""
        self.logger.info("job %s: %s -> %s%s", self.handle.job_id, was, status.state.value, message)
        if status.state is JobState.RUNNING and self.running_since is None:
            self.running_since = time.monotonic() - (status.running_seconds or 0.0)
        publish_training(job_state=status.state.value)

    def cost_so_far(self) -> float | None:
        """The monitor's billing rule: running time × price."""
        running = time.monotonic() - self.running_since if self.running_since else 0.0
        return self.run_cost(running_cost(running, self.price_per_hour))

    def run_cost(self, job_cost: float | None) -> float | None:
        """The run's spend: this job's, plus what the jobs it resumes cost."""
        return None if job_cost is None else job_cost + self.spent_before_usd

    def on_progress(self, update: ProgressUpdate) -> None:
        if update.is_evaluation:
            return self.on_evaluation(update)
        self.latest = update
        if (
            update.step >= update.total_steps
            or time.monotonic() - self.published_at >= PUBLISH_SECONDS
        ):
            self.flush()
        eta = "?" if update.eta_seconds is None else f"{update.eta_seconds:.0f}s"
        self.logger.info(
            "step %d/%d  loss %.4f  lr %.2e  eta %s",
            update.step,
            update.total_steps,
            update.loss or float("nan"),
            update.learning_rate or 0.0,
            eta,
        )

    def on_evaluation(self, update: ProgressUpdate) -> None:
        """Evaluations are few: each is published at once (the status, the progress bar's line)."""
        line = evaluation_line(update)
        update_progress_artifact(
            self.artifact_id,
            round(100 * update.fraction, 1),
            description=f"Training job {self.handle.job_id}: {line}",
        )
        self.logger.info(line)
        if update.eval_loss is not None:
            publish_evaluation(update.step, update.eval_loss, update.base_eval_loss)

    def flush(self) -> None:
        """Publish the latest progress record: progress bar, then the status."""
        update, self.published_at = self.latest, time.monotonic()
        if update is None:
            return
        update_progress_artifact(self.artifact_id, round(100 * update.fraction, 1))
        publish_training(
            step=update.step,
            total_steps=update.total_steps,
            percent=round(100 * update.fraction, 1),
            loss=update.loss,
            learning_rate=update.learning_rate,
            epoch=update.epoch,
            eta_seconds=update.eta_seconds,
        )
        publish_cost(self.cost_so_far())

    def on_metrics(self, metrics: GpuMetrics, cost_usd: float | None) -> None:
        publish_cost(self.run_cost(cost_usd))
        cost = "" if cost_usd is None else f"  cost so far ${cost_usd:.2f}"
        self.logger.info(
            "job %s: GPU %s%% util, %s/%s GB GPU memory%s",
            self.handle.job_id,
            metrics.gpu_utilization_pct,
            metrics.gpu_memory_used_gb,
            metrics.gpu_memory_total_gb,
            cost,
        )

    def on_stalled(self, quiet_seconds: float) -> None:
        self.logger.warning(
            "job %s looks stalled: no log line for %.0f s (it is still running; cancel it if it is stuck)",
            self.handle.job_id,
            quiet_seconds,
        )


@task(name="monitor-training")
def monitor_training(
    handle: JobHandle,
    estimate: CostEstimate | None = None,
    settings: MonitorSettings | None = None,
    spent_before_usd: float = 0.0,
) -> TrainingResult:
    """Follow the job to its end: stage changes, live progress artifact, metrics and cost, the final result.

    `spent_before_usd`: what the earlier jobs of the run cost (a resumed run's status counts them).
    """
    logger = get_run_logger()
    key = _artifact_key(handle.job_id)
    # Called from sync code, it returns the id (its async_dispatch type also allows a coroutine).
    artifact_id = cast(
        UUID,
        create_progress_artifact(
            0.0, key=f"training-progress-{key}", description=f"Training job {handle.job_id}"
        ),
    )
    links = job_links(handle)
    if links.hf_job:
        create_link_artifact(links.hf_job, link_text="Hugging Face job", key=f"training-job-{key}")
    for text, url in _link_rows(links):
        logger.info("%s: %s", text, url)
    publish_training(job_id=handle.job_id, backend=handle.backend.value)
    publish_links(hf_job=links.hf_job, trackio=links.trackio)
    price = estimate.price_per_hour if estimate else None
    watcher = _PrefectWatcher(handle, artifact_id, price, spent_before_usd)
    outcome = follow_job(handle, watcher, settings, price_per_hour=price)
    watcher.flush()
    publish_cost(watcher.run_cost(outcome.cost_usd))
    status, result = outcome.status, outcome.result
    if status.state is not JobState.COMPLETED or result is None:
        raise training_failure(handle, outcome)
    update_progress_artifact(artifact_id, 100.0)
    remote = handle.backend is not Backend.LOCAL
    publish_training(percent=100.0, **saved_model_evaluation(result))
    publish_links(model=result.get("hub_repo") if remote else result.get("model_dir"))
    create_markdown_artifact(_job_report(handle, outcome, links), key=f"training-report-{key}")
    return TrainingResult(
        handle=handle,
        model_dir=None if remote else result.get("model_dir"),
        adapter_dir=None if remote else result.get("adapter_dir"),
        hub_repo=result.get("hub_repo"),
        hub_revision=result.get("hub_revision"),
        global_step=result["global_step"],
        first_loss=result.get("first_loss"),
        final_loss=result.get("final_loss"),
        train_seconds=result.get("train_seconds", outcome.running_seconds),
        trackio_project=result.get("trackio_project", TRACKIO_PROJECT),
        running_seconds=outcome.running_seconds,
        **evaluation_fields(result),
    )


def saved_model_evaluation(result: dict) -> dict:
    """The status's final eval figures: the saved model's step (None: the last) and eval loss."""
    if result.get("eval_loss") is None:
        return {}
    return {
        "base_eval_loss": result.get("base_eval_loss"),
        "best_step": result.get("best_step"),
        "best_eval_loss": result["eval_loss"],
    }


def training_failure(handle: JobHandle, outcome: FollowOutcome) -> TrainingFailed:
    """The error of a job that did not complete; resumable unless it was stopped on purpose."""
    status = outcome.status
    stopped = next((r for line in outcome.tail if (r := parse_stopped_line(line))), None)
    reason = (stopped or {}).get("reason") or status.message or status.state.value
    last = "\n".join(outcome.tail[-20:])
    failure = TrainingFailed(
        f"training job {handle.job_id} ended {status.state.value} ({reason}); last log lines:\n{last}"
    )
    # The watchdog's stop or a cancel: another attempt would pay for the same end.
    failure.resumable = status.state is JobState.ERROR and (stopped or {}).get("resumable", True)
    failure.running_seconds = outcome.running_seconds
    return failure


def evaluation_fields(result: dict) -> dict:
    """The result line's evaluation figures, as `TrainingResult` fields."""
    return {
        "base_eval_loss": result.get("base_eval_loss"),
        "eval_loss": result.get("eval_loss"),
        "best_step": result.get("best_step"),
        "eval_history": result.get("eval_history") or [],
        "stopped_early": bool(result.get("stopped_early")),
        "resumed_from_step": result.get("resumed_from_step"),
    }


MONITOR_MARGIN_SECONDS = 900
"""How long the monitor may outlive the job's own timeout: scheduling, pushing, draining the log."""


def monitor_timeout(estimate: CostEstimate | None) -> float | None:
    """`timeout_seconds` of the monitor task: the job's timeout (the estimate's) plus a margin.

    The service ends the job at its timeout; a monitor still waiting well after that has lost
    the job (or the service), and fails instead of holding the worker and the budget forever.
    """
    if estimate is None or not estimate.timeout_seconds:
        return None
    return float(estimate.timeout_seconds + MONITOR_MARGIN_SECONDS)


def job_links(handle: JobHandle) -> RunLinks:
    """Links worth a click: the Hugging Face job page and the Trackio Space, when there is one."""
    if handle.backend is Backend.LOCAL:
        return RunLinks()
    credentials = load_hf_credentials()
    space = credentials.trackio_space_id
    return RunLinks(
        hf_job=handle.url, trackio=f"{credentials.hub_url}/spaces/{space}" if space else None
    )


def _link_rows(links: RunLinks) -> list[tuple[str, str]]:
    rows = [("Hugging Face job", links.hf_job), ("Trackio dashboard", links.trackio)]
    return [(text, url) for text, url in rows if url]


def _job_report(handle: JobHandle, outcome: FollowOutcome, links: RunLinks) -> str:
    rows = [
        f"| job | `{handle.job_id}` ({handle.backend.value}) |",
        f"| state | {outcome.status.state.value} |",
        f"| running time | {outcome.running_seconds:.0f} s |",
    ]
    if outcome.cost_usd is not None:
        rows.append(f"| cost | ${outcome.cost_usd:.2f} (running time × price) |")
    if (m := outcome.last_metrics) is not None:
        rows.append(
            f"| GPU | {m.gpu_count} × {m.gpu_utilization_pct}% util, {m.gpu_memory_used_gb}/{m.gpu_memory_total_gb} GB |"
        )
    rows += [f"| {text} | {url} |" for text, url in _link_rows(links)]
    return "# Training job\n\n| | |\n|---|---|\n" + "\n".join(rows) + "\n"


def _artifact_key(value: str) -> str:
    # Artifact keys: lowercase letters, digits and dashes only.
    return "".join(c if c.isalnum() else "-" for c in value.lower())
