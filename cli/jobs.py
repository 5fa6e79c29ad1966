"""`lmft cancel`: stop a training job, by its id or by the flow run that started it."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer

from cli.app import app, fail


@app.command()
def cancel(
    target: Annotated[
        str, typer.Argument(help="A job id (local or Hugging Face) or the id of a flow run.")
    ],
) -> None:
    """Cancel a training job; for a flow run id, cancel the run and every job it started."""
    from schemas.request import Backend
    from tasks.jobs.backends import cancel_job, find_jobs
    from tasks.jobs.local import find_local_jobs

    try:
        flow_run_id = uuid.UUID(target)
    except ValueError:
        flow_run_id = None
    if flow_run_id is not None:
        cancelling = _cancel_flow_run(flow_run_id)
        handles = []
        for backend in Backend:
            try:
                handles += find_jobs(backend, {"flow_run_id": str(flow_run_id)})
            except (
                RuntimeError
            ) as exc:  # backend not configured here: it cannot hold jobs of this run
                typer.echo(f"skipped {backend.value}: {exc}", err=True)
    elif target.startswith("local-"):
        handles = [h for h in find_local_jobs({}) if h.job_id == target]
    else:
        from blocks.huggingface import load_hf_credentials
        from tasks.jobs.hf import hf_job_handle

        try:
            handles = [hf_job_handle(load_hf_credentials(), target)]
        except RuntimeError as exc:
            raise fail(str(exc)) from None
        except Exception as exc:
            raise fail(f"no Hugging Face job {target!r} ({type(exc).__name__}: {exc})") from None
    if not handles and flow_run_id is None:
        raise fail(f"no training job found for {target!r}", code=1)
    for handle in handles:
        status = cancel_job(handle)
        typer.echo(f"job {handle.job_id} ({handle.backend.value}): {status.state.value}")
    if flow_run_id is not None and cancelling:
        _wait_until_final(flow_run_id)


def _cancel_flow_run(flow_run_id: uuid.UUID) -> bool:
    """Ask Prefect to cancel the run (True when it was still going): whoever runs it (its worker,
    or `lmft run` itself) stops it, runs its cancellation hooks and ends it Cancelled."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            typer.echo(f"no flow run {flow_run_id} in Prefect; cancelling its jobs only", err=True)
            return
        if run.state is not None and not run.state.is_final():
            client.set_flow_run_state(flow_run_id, Cancelling(), force=True)
            typer.echo(f"flow run {flow_run_id}: cancelling")
            return True
    return False


CANCEL_WAIT_SECONDS = 60.0


def _wait_until_final(flow_run_id: uuid.UUID) -> None:
    """Wait for whoever runs the flow run (a worker, or `lmft run` itself) to end it; say how."""
    import time

    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_final():
                typer.echo(f"flow run {flow_run_id}: {state.name}")
                return
            if time.monotonic() > deadline:
                typer.echo(
                    f"flow run {flow_run_id} is still {state.name if state else 'unknown'} after "
                    f"{CANCEL_WAIT_SECONDS:.0f} s: the process running it has not stopped it "
                    "(is that process still alive?); its jobs are cancelled",
                    err=True,
                )
                return
            time.sleep(1.0)
