"""One interface over the job backends: find, status, logs, metrics, cancel, by the handle's backend."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from blocks.huggingface import load_hf_credentials
from schemas.jobs import JobHandle, JobStatus
from schemas.request import Backend
from tasks.jobs.hf import (
    GpuMetrics,
    cancel_hf_job,
    find_hf_jobs,
    hf_job_logs,
    hf_job_metrics,
    hf_job_status,
)
from tasks.jobs.local import (
    cancel_local_job,
    find_local_jobs,
    local_job_logs,
    local_job_status,
)


def job_status(handle: JobHandle) -> JobStatus:
    """The job's current state, read from its backend."""
    if handle.backend is Backend.LOCAL:
        return local_job_status(handle)
    return hf_job_status(load_hf_credentials(), handle)


def job_logs(handle: JobHandle, *, follow: bool = False) -> Iterator[str]:
    """The job's log lines; with `follow`, until the job ends."""
    if handle.backend is Backend.LOCAL:
        return local_job_logs(handle, follow=follow)
    return hf_job_logs(load_hf_credentials(), handle, follow=follow)


def job_metrics(handle: JobHandle) -> GpuMetrics | None:
    """A resource sample of the running job (None where the backend has no metrics)."""
    if handle.backend is Backend.LOCAL:
        return None
    return hf_job_metrics(load_hf_credentials(), handle)


def tail_job_logs(handle: JobHandle, lines: int = 20) -> list[str]:
    """The last `lines` log lines of the job."""
    return list(deque(job_logs(handle), maxlen=lines))


def cancel_job(handle: JobHandle) -> JobStatus:
    """Cancel the job (a no-op when it has already ended); return its state afterwards."""
    if handle.backend is Backend.LOCAL:
        return cancel_local_job(handle)
    return cancel_hf_job(load_hf_credentials(), handle)


def find_jobs(backend: Backend, labels: dict[str, str]) -> list[JobHandle]:
    """Jobs carrying all of `labels`, newest first."""
    if backend is Backend.LOCAL:
        return find_local_jobs(labels)
    return find_hf_jobs(load_hf_credentials(), labels)


def jobs_of_flow_run(flow_run_id: str) -> list[JobHandle]:
    """The training jobs a flow run started, on every backend configured here."""
    handles: list[JobHandle] = []
    for backend in Backend:
        try:
            handles += find_jobs(backend, {"flow_run_id": flow_run_id})
        except RuntimeError:  # backend not configured here: it cannot hold jobs of this run
            continue
    return handles


def jobs_running_seconds(flow_run_id: str) -> float | None:
    """The running time the backends bill for the jobs of a flow run (None: no job reports one)."""
    seconds = [job_status(handle).running_seconds for handle in jobs_of_flow_run(flow_run_id)]
    known = [s for s in seconds if s is not None]
    return sum(known) if known else None
