"""`lmft health-check`: the check the GitHub Actions health workflow runs (no worker needed)."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from pydantic import SecretStr

from cli.app import app, fail


@app.command("health-check")
def health_check(
    pool: Annotated[str, typer.Option(help="Work pool that must have a worker online.")] = "github-actions",
    dispatch: Annotated[
        str | None,
        typer.Option(help="Workflow file to dispatch when no worker is online (needs GITHUB_TOKEN, GITHUB_REPOSITORY)."),
    ] = None,
    dispatch_input: Annotated[list[str], typer.Option(help="KEY=VALUE input of the dispatched workflow.")] = [],  # noqa: B006 - typer reads the default
) -> None:
    """Check the Prefect API and the pool's workers; start a worker when none is online.

    Exits 1 when unhealthy, unless a worker was just dispatched (the next check verifies it).
    """
    from tasks.github_workflows import WorkflowDispatchFailed, WorkflowTarget
    from tasks.health import check_prefect_health, start_worker_if_missing

    report = check_prefect_health(pool)
    if dispatch and not report.healthy:
        token = os.environ.get("GITHUB_TOKEN")
        if not token:
            raise fail("--dispatch needs GITHUB_TOKEN (a token that may write actions)")
        try:
            target = WorkflowTarget.from_actions_env(
                workflow=dispatch, inputs=dict(item.split("=", 1) for item in dispatch_input)
            )
            start_worker_if_missing(report, target, token=SecretStr(token))
        except (ValueError, WorkflowDispatchFailed) as exc:
            typer.echo(report.model_dump_json(indent=2))
            raise fail(str(exc), code=1) from None
    typer.echo(report.model_dump_json(indent=2))
    for problem in report.problems:
        typer.secho(f"unhealthy: {problem}", fg=typer.colors.RED, err=True)
    if report.worker_dispatched:
        typer.echo(f"dispatched {dispatch} to start a worker for pool {pool!r}")
    if not report.healthy and not report.worker_dispatched:
        raise typer.Exit(1)
