"""`lmft run`: the whole pipeline."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.app import (
    ConfigArgument,
    DatasetOption,
    MethodOption,
    ModelOption,
    app,
    fail,
    request_from_cli,
)


@app.command()
def run(
    config: ConfigArgument = None,
    model: ModelOption = None,
    dataset: DatasetOption = None,
    method: MethodOption = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after this many optimizer steps.")
    ] = None,
    backend: Annotated[str | None, typer.Option(help="local | hf-jobs")] = None,
    output_name: Annotated[str | None, typer.Option(help="Name of the trained model.")] = None,
    resume_from: Annotated[
        str | None,
        typer.Option(
            help="Continue from an earlier run's last checkpoint: its flow run id or job id."
        ),
    ] = None,
) -> None:
    """Run the `finetune` flow and print where the trained model is."""
    request = request_from_cli(
        config,
        dataset,
        {
            "base_model": model,
            "method": method,
            "backend": backend,
            "output_name": output_name,
            "resume_from": resume_from,
        },
        max_steps=max_steps,
    )

    from prefect.exceptions import TerminationSignal

    from cli.status import status_lines
    from flows.finetune import finetune

    try:
        state = finetune(request, return_state=True)
    except TerminationSignal:  # `lmft cancel`: the run ended Cancelled (tasks/cancellation.py)
        raise fail(
            "the finetune flow run was cancelled: its training job is cancelled and its budget "
            "hold released",
            code=1,
        ) from None
    if not state.is_completed():
        raise fail(f"the finetune flow ended {state.name}: {state.message}", code=1)
    summary = state.result()
    typer.echo("")
    typer.secho(
        f"Fine-tuned {summary.output_name} in {summary.steps} steps",
        fg=typer.colors.GREEN,
        bold=True,
    )
    typer.echo(f"  loss          {summary.first_loss:.4f} -> {summary.final_loss:.4f}")
    if summary.eval_loss is not None:
        best = (
            f" (best step {summary.best_step}{', stopped early' if summary.stopped_early else ''})"
        )
        base = "n/a" if summary.base_eval_loss is None else f"{summary.base_eval_loss:.4f}"
        typer.echo(f"  eval loss     {base} -> {summary.eval_loss:.4f} on held-out rows{best}")
    if len(summary.jobs) > 1:
        typer.echo(f"  jobs          {' -> '.join(summary.jobs)} (resumed from checkpoints)")
    typer.echo(
        "  wall time     " + ", ".join(f"{k} {v:.0f}s" for k, v in summary.step_seconds.items())
    )
    run_id = state.state_details.flow_run_id
    assert run_id is not None  # a finished flow run's state names it
    for line in status_lines(run_id):  # stage, gate, cost, links: what the run published
        typer.echo(line)
    if summary.gguf_decision:
        typer.echo(f"  GGUF check    {summary.gguf_decision}")
    if summary.deployment_url:
        typer.echo(
            f"  serving       {summary.deployment_status}; `lmft serve list`, `lmft serve stop`"
        )
    typer.echo(f"  Trackio       trackio show --project {summary.trackio_project}")
    typer.echo(
        "  Prefect UI    prefect server start, then open http://127.0.0.1:4200 (set PREFECT_API_URL to keep runs)"
    )
    typer.echo(f"  status        lmft status {run_id}")
