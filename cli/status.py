"""`lmft status`: where a run stands, from the status it publishes (stage, gate, progress, cost, links)."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer

from cli.app import app, fail


@app.command()
def status(
    run_id: Annotated[
        str,
        typer.Argument(help="Flow run id, as `lmft run`, `lmft mcp` or the Prefect UI show it."),
    ],
) -> None:
    """Print a run's state and published status: stage, budget gate, step/total, losses, ETA, cost, links."""
    try:
        flow_run_id = uuid.UUID(run_id)
    except ValueError:
        raise fail(f"{run_id!r} is not a flow run id (a UUID)") from None
    for line in status_lines(flow_run_id):
        typer.echo(line)


def status_lines(flow_run_id: uuid.UUID) -> list[str]:
    """The run's status as `lmft` prints it; read through the same code as the MCP tool get_job_status."""
    import anyio

    from mcp_adapter.status import job_status

    result = anyio.run(job_status, flow_run_id)
    if result.error:
        raise fail(result.error, code=1)
    run = result.run
    assert run is not None  # a result without error names its run
    lines = [f"  run           {run.name} ({run.flow}): {run.state_name}"]
    if run.ui_url:
        lines.append(f"  UI            {run.ui_url}")
    if run.state_message and run.state.value != "completed":
        lines.append(f"  message       {run.state_message}")
    if result.stage:
        lines.append(f"  stage         {result.stage.value}")
    if result.gate:
        lines.append(f"  budget gate   {result.gate.value}")
    if result.estimate:
        e = result.estimate
        lines.append(
            f"  estimate      ${e.expected_usd:.2f} (up to ${e.high_usd:.2f}) on {e.hardware}"
        )
    if (p := result.progress) is not None and p.step is not None:
        losses = "" if p.loss is None else f", loss {p.loss:.4f}"
        losses += "" if p.eval_loss is None else f", eval loss {p.eval_loss:.4f}"
        eta = (
            ""
            if p.eta_seconds is None or p.step >= (p.total_steps or 0)
            else f", ETA {p.eta_seconds:.0f} s"
        )
        lines.append(f"  training      step {p.step}/{p.total_steps}{losses}{eta}")
    if p is not None and p.best_eval_loss is not None:
        base = "" if p.base_eval_loss is None else f"base {p.base_eval_loss:.4f} -> "
        at = "the last step" if p.best_step is None else f"step {p.best_step}"
        lines.append(f"  eval loss     {base}best {p.best_eval_loss:.4f} at {at}")
    if result.cost_so_far_usd is not None:
        lines.append(f"  cost so far   ${result.cost_so_far_usd:.2f}")
    for name, url in result.links or []:
        if url:
            lines.append(f"  {LINK_LABELS.get(name, name.replace('_', ' ')):<13} {url}")
    return lines


# How `lmft` names the run's links (RunLinks' fields); the others print as named.
LINK_LABELS = {
    "hf_job": "HF job",
    "trackio": "Trackio",
    "gguf": "GGUF",
    "gguf_repo": "GGUF repo",
    "pull_request": "pull request",
}
