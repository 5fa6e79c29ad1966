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
        _cancel_flow_run(flow_run_id)
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
    if not handles:
        raise fail(f"no training job found for {target!r}", code=1)
    for handle in handles:
        status = cancel_job(handle)
        typer.echo(f"job {handle.job_id} ({handle.backend.value}): {status.state.value}")


def _cancel_flow_run(flow_run_id: uuid.UUID) -> None:
    """Ask Prefect to cancel the run; its worker stops it and the run's cancellation hook fires."""
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
