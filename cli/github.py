"""`lmft github-dispatch` (what the GitHub workflows run) and `lmft request-finetune` (the
Prefect-native way to ask for a fine-tune: an event the `finetune` deployment's trigger answers)."""

from __future__ import annotations

from pathlib import Path
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


@app.command("github-dispatch")
def github_dispatch(
    pipeline: Annotated[str, typer.Argument(help="train | validate | convert | deploy")],
    event_file: Annotated[
        Path | None, typer.Option(help="Event payload JSON (default: $GITHUB_EVENT_PATH).")
    ] = None,
    event_name: Annotated[
        str | None,
        typer.Option(help="workflow_dispatch | repository_dispatch (default: $GITHUB_EVENT_NAME)."),
    ] = None,
    run_id: Annotated[
        str | None, typer.Option(help="The workflow run id (default: $GITHUB_RUN_ID).")
    ] = None,
    wait_seconds: Annotated[float, typer.Option(help="Follow the run at most this long.")] = 3600,
) -> None:
    """Start the pipeline deployment a GitHub event asks for, follow it, write the step summary."""
    from operations.github_entry import main

    argv = [pipeline, "--wait-seconds", str(wait_seconds)]
    for flag, value in (
        ("--event-file", event_file),
        ("--event-name", event_name),
        ("--run-id", run_id),
    ):
        if value is not None:
            argv += [flag, str(value)]
    raise typer.Exit(main(argv))


@app.command("request-finetune")
def request_finetune(
    config: ConfigArgument = None,
    model: ModelOption = None,
    dataset: DatasetOption = None,
    method: MethodOption = None,
    backend: Annotated[str | None, typer.Option(help="local | hf-jobs")] = None,
    hardware: Annotated[str | None, typer.Option(help="'auto' or an HF Jobs flavor.")] = None,
    key: Annotated[
        str | None, typer.Option(help="Idempotency key: the same key never starts a second job.")
    ] = None,
) -> None:
    """Emit `lmft.finetune.requested`; the `finetune` deployment's trigger starts the run."""
    from operations.finetune_requests import RequestNotSent, emit_finetune_request

    request = request_from_cli(
        config,
        dataset,
        {"base_model": model, "method": method, "backend": backend, "hardware": hardware},
    )
    try:
        event = emit_finetune_request(request, idempotency_key=key)
    except RequestNotSent as exc:
        raise fail(str(exc)) from None
    typer.echo(
        f"emitted {event.event} {event.id} for {event.resource.id}; the finetune deployment's trigger starts the run"
    )
