"""Is the service up? The Prefect API answers, and a worker is online for the work pool.

A worker is online when the Prefect server has had its heartbeat recently (the server
marks a worker OFFLINE after a few missed heartbeats). When no worker is online, the
remedy is to dispatch the worker workflow on GitHub Actions.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import task
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import WorkerStatus
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel, Field, SecretStr

from operations.github_workflows import WorkflowTarget, dispatch_workflow


class WorkerSeen(BaseModel):
    """A worker of the pool, as the Prefect server last heard from it."""

    name: str
    online: bool
    last_heartbeat: datetime | None


class HealthReport(BaseModel):
    """The outcome of one health check."""

    pool: str
    checked_at: datetime
    api_healthy: bool
    pool_found: bool = False
    workers: list[WorkerSeen] = []
    problems: list[str] = Field(
        default=[], description="What is wrong and what to do, one line each."
    )
    worker_dispatched: bool = False

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def workers_online(self) -> list[str]:
        return [worker.name for worker in self.workers if worker.online]


def check_prefect_health(pool: str) -> HealthReport:
    """Ask the Prefect API for its health and for the workers of `pool`."""
    report = HealthReport(pool=pool, checked_at=datetime.now(UTC), api_healthy=False)
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
        if error is not None:
            report.problems.append(
                f"Prefect API at {client.api_url} is not healthy ({type(error).__name__}: {error}); "
                "check the server (or PREFECT_API_URL / PREFECT_API_KEY)"
            )
            return report
        report.api_healthy = True
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            report.problems.append(
                f"work pool {pool!r} does not exist; create it with `prefect work-pool create {pool} --type process`"
            )
            return report
        workers = client.read_workers_for_work_pool(pool)
    report.pool_found = True
    report.workers = [
        WorkerSeen(
            name=w.name,
            online=w.status is WorkerStatus.ONLINE,
            last_heartbeat=w.last_heartbeat_time,
        )
        for w in workers
    ]
    if not report.workers_online:
        report.problems.append(
            f"no worker online for work pool {pool!r}; start one (the prefect-worker workflow)"
        )
    return report


def start_worker_if_missing(
    report: HealthReport, target: WorkflowTarget, *, token: SecretStr
) -> HealthReport:
    """Dispatch the worker workflow when the API is up but no worker serves the pool."""
    if report.api_healthy and report.pool_found and not report.workers_online:
        dispatch_workflow(target, token=token)
        report.worker_dispatched = True
    return report


@task(name="check-prefect-health", retries=2, retry_delay_seconds=[10, 30], timeout_seconds=120)
def check_health(pool: str) -> HealthReport:
    """Check the Prefect API and the workers of `pool`."""
    return check_prefect_health(pool)
