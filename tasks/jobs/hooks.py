"""Flow-run state hooks that keep training jobs in step with their flow run."""

from __future__ import annotations

import logging

from schemas.request import Backend
from tasks.jobs.backends import cancel_job, find_jobs

logger = logging.getLogger(__name__)


def cancel_job_of_flow_run(flow, flow_run, state) -> None:
    """On cancellation of a flow run, cancel the training jobs it started (every backend)."""
    for backend in Backend:
        try:
            handles = find_jobs(backend, {"flow_run_id": str(flow_run.id)})
        except RuntimeError:  # backend not configured here: it cannot hold jobs of this run
            continue
        for handle in handles:
            status = cancel_job(handle)
            logger.warning(
                "flow run %s cancelled: job %s is now %s",
                flow_run.id,
                handle.job_id,
                status.state.value,
            )
