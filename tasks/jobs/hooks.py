"""Flow-run state hooks that keep training jobs in step with their flow run."""

from __future__ import annotations

import logging

from schemas.request import Backend
from tasks.jobs.backends import cancel_job, find_jobs

logger = logging.getLogger(__name__)


def cancel_job_of_flow_run(flow, flow_run, state) -> None:
    """When a flow run is cancelled, fails or crashes, cancel the training jobs it started (every backend).

    A job that already ended is left as it is, so the hook is safe to run twice (in the run's
    process, then again from Prefect's runner or the run guard).
    """
    for backend in Backend:
        try:
            handles = find_jobs(backend, {"flow_run_id": str(flow_run.id)})
        except RuntimeError:  # backend not configured here: it cannot hold jobs of this run
            continue
        except Exception as exc:  # unreachable: say so, and go on with the other backends
            logger.error(
                "flow run %s %s: could not list its %s jobs (%s: %s); check with `lmft cancel %s`",
                flow_run.id,
                state.name,
                backend.value,
                type(exc).__name__,
                exc,
                flow_run.id,
            )
            continue
        for handle in handles:
            try:
                status = cancel_job(handle)
            except Exception as exc:  # one unreachable backend must not keep the others running
                logger.error(
                    "flow run %s %s: could not cancel job %s (%s: %s); cancel it with `lmft cancel %s`",
                    flow_run.id,
                    state.name,
                    handle.job_id,
                    type(exc).__name__,
                    exc,
                    handle.job_id,
                )
                continue
            logger.warning(
                "flow run %s %s: job %s is now %s",
                flow_run.id,
                state.name,
                handle.job_id,
                status.state.value,
            )
