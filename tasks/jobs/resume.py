"""Resume training that ended early: find the last checkpoint a job left, gate what is left, submit again.

A job saves checkpoints (weights, optimizer, scheduler, RNG states) every `checkpoints.save_steps`,
every `checkpoints.save_minutes` and on SIGTERM: locally into its job folder
(`output/checkpoints/checkpoint-N`), on Hugging Face Jobs also to the output repository's
`checkpoints/last/` folder. When a job fails, is cut by its timeout or is lost with its machine,
`train_resuming` settles what it ran, reserves the budget of the remaining steps and submits a new
job that resumes from that checkpoint (same global step, data order and learning-rate schedule).
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
from prefect import get_run_logger, task

from blocks.huggingface import load_hf_credentials
from schemas.costs import CostEstimate
from schemas.jobs import JobHandle, ResumePoint, TrainingFailed, TrainingResult
from schemas.request import Backend, FineTuneRequest
from schemas.validation import ValidationReport
from tasks.costs import estimate_cost
from tasks.costs.budget import gate_budget, record_job_start, settle_budget, settle_ended_job
from tasks.costs.ledger import Reservation
from tasks.jobs.backends import find_jobs
from tasks.jobs.hf import call_with_backoff, hf_job_handle
from tasks.jobs.local import job_dir
from tasks.jobs.monitor import running_cost
from tasks.jobs.training import monitor_timeout, monitor_training, submit_training

HUB_CHECKPOINT_STATE = "checkpoints/last/trainer_state.json"
"""Where train.py pushes the last checkpoint's trainer state (its HUB_CHECKPOINT_FOLDER)."""


def find_resume_point(handle: JobHandle) -> ResumePoint | None:
    """The last complete checkpoint job `handle` saved, or None when it saved none."""
    if handle.backend is Backend.LOCAL:
        return _local_resume_point(handle)
    return _hub_resume_point(handle)


def _local_resume_point(handle: JobHandle) -> ResumePoint | None:
    folder = Path(handle.output_dir or job_dir(handle.job_id) / "output") / "checkpoints"
    # trainer_state.json is written last: a checkpoint cut by a kill has none and is skipped.
    states = [p for p in folder.glob("checkpoint-*/trainer_state.json") if p.is_file()]
    if not states:
        return None
    last = max(states, key=lambda p: int(p.parent.name.rsplit("-", 1)[-1]))
    state = json.loads(last.read_text())
    return ResumePoint(
        checkpoint=str(last.parent),
        step=state["global_step"],
        total_steps=state["max_steps"],
        job_id=handle.job_id,
    )


def _hub_resume_point(handle: JobHandle) -> ResumePoint | None:
    credentials = load_hf_credentials()
    api = credentials.api()
    repo = hub_repo_of(handle)
    if repo is None:
        return None
    try:
        path = call_with_backoff(
            lambda: api.hf_hub_download(repo, HUB_CHECKPOINT_STATE),
            what=f"read the last checkpoint of {repo}",
        )
    except (EntryNotFoundError, RepositoryNotFoundError):
        return None
    state = json.loads(Path(path).read_text())
    return ResumePoint(
        checkpoint=f"hub:{repo}",
        step=state["global_step"],
        total_steps=state["max_steps"],
        job_id=handle.job_id,
    )


def hub_repo_of(handle: JobHandle) -> str | None:
    """The repository a Hugging Face job pushes to: its `--push_to_hub_repo` argument."""
    credentials = load_hf_credentials()
    api = credentials.api()
    job = call_with_backoff(
        lambda: api.inspect_job(
            job_id=handle.job_id, namespace=handle.namespace or credentials.namespace
        ),
        what=f"inspect job {handle.job_id}",
    )
    words = [*(job.command or []), *(job.arguments or [])]
    if "--push_to_hub_repo" in words[:-1]:
        return words[words.index("--push_to_hub_repo") + 1]
    return None


def resume_point_of(reference: str, backend: Backend) -> ResumePoint:
    """The last checkpoint of an earlier run (its flow run id) or job (its id), for `resume_from`."""
    handles = find_jobs(backend, {"flow_run_id": reference})
    if not handles:
        handles = [_job_handle(reference, backend)]
    for handle in handles:  # newest first: a resumed run's last job holds its last checkpoint
        if (point := find_resume_point(handle)) is not None:
            return point
    raise ValueError(
        f"resume_from: {reference!r} left no checkpoint to continue from (jobs: "
        f"{', '.join(h.job_id for h in handles)})"
    )


def _job_handle(job_id: str, backend: Backend) -> JobHandle:
    if backend is Backend.LOCAL:
        record = job_dir(job_id) / "job.json"
        if not record.is_file():
            raise ValueError(
                f"resume_from: {job_id!r} is neither a flow run nor a local job of this machine"
            )
        return JobHandle.model_validate(json.loads(record.read_text())["handle"])
    try:
        return hf_job_handle(load_hf_credentials(), job_id)
    except Exception as exc:
        raise ValueError(
            f"resume_from: {job_id!r} is neither a flow run nor a Hugging Face job of this namespace ({exc})"
        ) from exc


def remaining_request(request: FineTuneRequest, point: ResumePoint) -> FineTuneRequest:
    """The request as the estimator should see the rest of the run: its remaining steps."""
    remaining = max(1, point.total_steps - point.step)
    hyperparameters = request.hyperparameters.model_copy(update={"max_steps": remaining})
    return request.model_copy(update={"hyperparameters": hyperparameters})


@task(name="find-start-checkpoint", timeout_seconds=600)  # a Hub read with backoff
def find_start_checkpoint(request: FineTuneRequest) -> ResumePoint | None:
    """The checkpoint `request.resume_from` names (None without one); refused before money is spent."""
    if not request.resume_from:
        return None
    point = resume_point_of(request.resume_from, request.backend)
    how = "continue its adapter" if point.finished else "resume"
    get_run_logger().info(
        "resume_from %s: job %s's checkpoint at step %d/%d (%s)",
        request.resume_from,
        point.job_id,
        point.step,
        point.total_steps,
        how,
    )
    return point


def estimate_from(
    request: FineTuneRequest, report: ValidationReport, start: ResumePoint | None
) -> CostEstimate:
    """The estimate of what is left to train: all of it, or the steps after an unfinished checkpoint."""
    if start is None or start.finished:
        return estimate_cost(request, report)
    return estimate_cost(remaining_request(request, start), report)


def train_resuming(
    request: FineTuneRequest,
    model: str,
    *,
    key: str,
    labels: dict[str, str],
    estimate: CostEstimate,
    report: ValidationReport,
    reservation: Reservation | None,
    start: ResumePoint | None = None,
) -> TrainingResult:
    """Train; a job that ends early and left a checkpoint is followed by one resuming from it.

    Runs in the flow body (the budget gate may pause the flow for an approval). Each job has
    its own idempotency key (`KEY`, `KEY-resume-1`, …) and its own ledger entry, all under the
    flow run; the jobs stopped on purpose (watchdog, cancel) are not resumed.
    """
    logger = get_run_logger()
    earlier: list[str] = []
    job_key, spent = key, 0.0
    while True:
        handle = submit_training(
            request, model, idempotency_key=job_key, labels=labels, estimate=estimate, start=start
        )
        record_job_start(reservation, handle)
        try:
            result = monitor_training.with_options(timeout_seconds=monitor_timeout(estimate))(
                handle, estimate, spent_before_usd=spent
            )
        except TrainingFailed as failure:
            spent += running_cost(failure.running_seconds or 0.0, estimate.price_per_hour) or 0.0
            settle_ended_job(
                reservation,
                running_seconds=failure.running_seconds,
                note=f"job {handle.job_id} ended early: {str(failure).splitlines()[0]}",
            )
            point = find_resume_point(handle) if failure.resumable else None
            if point is None or len(earlier) >= request.checkpoints.max_resumes:
                raise
            earlier.append(handle.job_id)
            start, job_key = point, f"{key}-resume-{len(earlier)}"
            logger.warning(
                "job %s ended early; resuming from its checkpoint at step %d/%d (attempt %d of %d)",
                handle.job_id,
                point.step,
                point.total_steps,
                len(earlier),
                request.checkpoints.max_resumes,
            )
            if request.backend is not Backend.LOCAL:  # the same flavor as the job it continues
                request = request.model_copy(update={"hardware": estimate.hardware})
            estimate = estimate_from(request, report, point)
            reservation = gate_budget(estimate, run_key=job_key)
            continue
        settle_budget(reservation, result)
        return result.model_copy(update={"earlier_jobs": earlier})
