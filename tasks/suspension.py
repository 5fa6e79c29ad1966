"""Long waits in a flow body: suspend the run where Prefect can resume it anywhere, else pause.

A suspended run (`suspend_flow_run`) gives back its process and its deployment's concurrency
slot while it waits. Resuming it puts it back in the queue: a worker, any worker, runs the
flow again from the start, so the flows that wait persist their results
(`persist_result=True`, in a result storage every worker reads) and the tasks before the wait
return their cached results instead of running again; the wait itself, keyed, returns the
input it was resumed with.

Prefect only reschedules top-level runs of a deployment. A flow called in-process — `lmft
run`, `python -m flows.finetune`, the `finetune` subflow of `retrain` — pauses in place
instead (`pause_flow_run`): its process waits, as its caller does anyway.
"""

from __future__ import annotations

from typing import TypeVar

from prefect.context import FlowRunContext
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput

R = TypeVar("R", bound=RunInput)


def can_suspend() -> bool:
    """Whether Prefect can reschedule the current flow run: a top-level run of a deployment."""
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    return run is not None and run.deployment_id is not None and run.parent_task_run_id is None


def wait_for_input(form: type[R], *, key: str, timeout: int, poll_interval: int = 10) -> R:
    """Wait up to `timeout` s for a human to resume the run with `form`; return their input.

    Suspends the run when it can (see `can_suspend`): the process exits here and the input is
    returned by the resumed run, when it reaches this call again; Prefect's server fails a
    suspended run that nobody resumed in time. Otherwise pauses in place and raises
    `prefect.exceptions.FlowPauseTimeout` after `timeout` s.
    """
    if can_suspend():
        return suspend_flow_run(wait_for_input=form, timeout=timeout, key=key)
    return pause_flow_run(
        wait_for_input=form, timeout=timeout, poll_interval=poll_interval, key=key
    )
