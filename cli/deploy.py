"""`lmft deploy` and `lmft serve`: put a GGUF in front of users, list and stop local servers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from cli.app import app, fail

serve_app = typer.Typer(
    help="Model servers started by `lmft deploy`: local ones, and serverless-llm deploys.",
    no_args_is_help=True,
)
app.add_typer(serve_app, name="serve")

_FAILED_STATUSES = ("failed", "rolled_back")


def _echo_record(record) -> None:
    """The status line and links of a ServedModel, as `lmft deploy` prints them."""
    status = record.status.value
    colour = typer.colors.RED if status in _FAILED_STATUSES else typer.colors.GREEN
    typer.echo("")
    typer.secho(f"{record.name}: {status}", fg=colour, bold=True)
    for label, value in (
        ("reason", record.reason),
        ("url", record.url),
        ("pull request", record.pull_request_url),
        ("build run", record.build_run_url),
        ("inference run", record.inference_run_url),
        ("rolled back", record.rolled_back_by),
    ):
        if value:
            typer.echo(f"  {label:<14}{value}")


@app.command()
def deploy(
    gguf: Annotated[
        str | None,
        typer.Argument(
            help="A .gguf file or hf://owner/repo/file.gguf. Default: the embedded SmolLM2."
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Model name. Default: derived from the file name.")
    ] = None,
    target: Annotated[
        str, typer.Option(help="'local' or a saved ServerlessLLMTarget block name.")
    ] = "local",
    quality_report: Annotated[
        Path | None, typer.Option(help="Markdown file to put in the pull request.")
    ] = None,
    hf_repo: Annotated[
        str | None, typer.Option(help="Hub repo to upload a local GGUF to (serverless-llm).")
    ] = None,
    rollback: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Redeploy the registered model that the one serving as NAME on --target replaced.",
        ),
    ] = None,
) -> None:
    """Run the `deploy` flow and print where the model answers."""
    from tasks.jobs.base_model import embedded_gguf_path
    from tasks.serving.local import local_name_for

    if quality_report is not None and not quality_report.is_file():
        raise fail(f"quality report {quality_report} does not exist")
    if rollback is not None:
        if gguf is not None or name is not None:
            raise fail("--rollback NAME takes no GGUF argument and no --name: it names the model")
        path, name = None, rollback
    else:
        path = gguf or str(embedded_gguf_path())
        if not path.startswith("hf://") and not Path(path).expanduser().is_file():
            raise fail(f"GGUF file {path} does not exist")
        name = name or local_name_for(Path(path).stem.split(".")[0])

    from flows.deploy import deploy as deploy_flow
    from tasks.serving.deploy import list_deployment_records

    started = datetime.now(UTC)
    state = deploy_flow(
        path,
        name,
        target,
        quality_report_md=quality_report.read_text() if quality_report else None,
        hf_repo=hf_repo,
        rollback=rollback is not None,
        return_state=True,
    )
    if not state.is_completed():
        for record in list_deployment_records():
            if record.name == name and record.deployed_at >= started:
                _echo_record(record)  # the failed or rolled-back deploy this run recorded
        raise fail(f"the deploy flow ended {state.name}: {state.message}", code=1)
    deployment = state.result()
    _echo_record(deployment)
    if deployment.smoke:
        typer.echo(f"  smoke reply   {deployment.smoke.reply!r}")
    if deployment.target == "local":
        typer.echo(
            f"  try it        curl {deployment.url}/v1/chat/completions -H 'Content-Type: application/json' "
            f'-d \'{{"messages": [{{"role": "user", "content": "Hello"}}]}}\''
        )
        typer.echo(f"  stop it       lmft serve stop {deployment.name}")


@serve_app.command("list")
def serve_list() -> None:
    """List running local model servers, then every serverless-llm deploy (failed ones too)."""
    from tasks.serving.deploy import list_deployment_records
    from tasks.serving.local import list_local_servers

    servers = list_local_servers()
    remote = [r for r in list_deployment_records() if r.target != "local"]
    if not servers and not remote:
        typer.echo("no local model server is running and no serverless-llm deploy is recorded")
    for record in remote:
        fields = record.model_dump(
            mode="json",
            include={"name", "target", "status", "url", "pull_request_url", "inference_run_url"}
            | {"rolled_back_by", "reason", "deployed_at"},
        )
        typer.echo(json.dumps({k: v for k, v in fields.items() if v is not None}))
    for server in servers:
        typer.echo(
            json.dumps(
                {
                    "name": server.name,
                    "url": server.url,
                    "pid": server.pid,
                    "gguf": server.gguf_path,
                }
            )
        )


@serve_app.command("stop")
def serve_stop(
    name: Annotated[str, typer.Argument(help="Model name, as `lmft serve list` shows it.")],
) -> None:
    """Stop a local model server."""
    from tasks.serving.local import local_name_for, stop_local_server

    if not stop_local_server(local_name_for(name)):
        raise fail(f"no local server named {name!r} is running (see `lmft serve list`)", code=1)
    typer.echo(f"stopped {name}")
