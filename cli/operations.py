"""`lmft health-check`: is the Prefect API up and a worker online? (The Actions cron runs
the same check as `python -m operations.remedy`, which installs lighter.)"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.app import app, fail


@app.command("health-check")
def health_check(
    pool: Annotated[
        str, typer.Option(help="Work pool that must have a worker online.")
    ] = "github-actions",
    dispatch: Annotated[
        str | None,
        typer.Option(
            help="Workflow file to dispatch when no worker is online (needs GITHUB_TOKEN, GITHUB_REPOSITORY)."
        ),
    ] = None,
    dispatch_input: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE input of the dispatched workflow.")
    ] = None,
) -> None:
    """Check the Prefect API and the pool's workers; start a worker when none is online.

    Exits 1 when unhealthy, unless a worker was just dispatched (the next check verifies it).
    """
    from operations.remedy import HealthCheckError, check_and_remedy, exit_code

    try:
        inputs = dict(item.split("=", 1) for item in dispatch_input or [])
        report = check_and_remedy(pool, dispatch=dispatch, inputs=inputs)
    except (HealthCheckError, ValueError) as exc:
        raise fail(str(exc), code=2) from None
    typer.echo(report.model_dump_json(indent=2))
    for problem in report.problems:
        typer.secho(f"unhealthy: {problem}", fg=typer.colors.RED, err=True)
    if report.worker_dispatched:
        typer.echo(f"dispatched {dispatch} to start a worker for pool {pool!r}")
    raise typer.Exit(exit_code(report))
