"""One interface over the job backends: find, status, logs, cancel, by the handle's backend."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from tasks.jobs.local import (
    cancel_local_job,
    find_local_jobs,
    local_job_logs,
    local_job_status,
)
from tasks.jobs.models import JobHandle, JobStatus
from tasks.request import Backend


def _unsupported(backend: Backend) -> RuntimeError:
    return RuntimeError(
        f"backend {backend.value!r} is not available in this installation; use backend 'local'"
    )


def job_status(handle: JobHandle) -> JobStatus:
    """The job's current state, read from its backend."""
    if handle.backend is Backend.LOCAL:
        return local_job_status(handle)
    raise _unsupported(handle.backend)


def job_logs(handle: JobHandle, *, follow: bool = False) -> Iterator[str]:
    """The job's log lines; with `follow`, until the job ends."""
    if handle.backend is Backend.LOCAL:
        return local_job_logs(handle, follow=follow)
    raise _unsupported(handle.backend)


def tail_job_logs(handle: JobHandle, lines: int = 20) -> list[str]:
    """The last `lines` log lines of the job."""
    return list(deque(job_logs(handle), maxlen=lines))


def cancel_job(handle: JobHandle) -> JobStatus:
    """Cancel the job (a no-op when it has already ended); return its state afterwards."""
    if handle.backend is Backend.LOCAL:
        return cancel_local_job(handle)
    raise _unsupported(handle.backend)


def find_jobs(backend: Backend, labels: dict[str, str]) -> list[JobHandle]:
    """Jobs carrying all of `labels`, newest first."""
    if backend is Backend.LOCAL:
        return find_local_jobs(labels)
    raise _unsupported(backend)
