"""`lmft approve` and `lmft reject`: answer a run that waits at the budget gate."""

from __future__ import annotations

import getpass
import uuid
from typing import Annotated, Literal

import typer

from cli.app import app, fail

RunIdArgument = Annotated[
    uuid.UUID, typer.Argument(help="The id of the flow run that waits for approval.")
]
NoteOption = Annotated[str, typer.Option(help="Why; recorded in the budget ledger.")]
ApproverOption = Annotated[
    str | None, typer.Option(help="Who decides (name or e-mail; default: your login name).")
]


@app.command()
def approve(run_id: RunIdArgument, note: NoteOption = "", approver: ApproverOption = None) -> None:
    """Approve a run waiting at the budget gate: its training starts and may spend the held amount."""
    _decide(run_id, "approve", note, approver)


@app.command()
def reject(run_id: RunIdArgument, note: NoteOption = "", approver: ApproverOption = None) -> None:
    """Reject a run waiting at the budget gate: it stops without training and nothing is spent."""
    _decide(run_id, "reject", note, approver)


def _decide(
    run_id: uuid.UUID, verdict: Literal["approve", "reject"], note: str, approver: str | None
) -> None:
    """Resume the waiting run with an `ApprovalDecision`, the input its approval form asks for."""
    from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL
    from pydantic import ValidationError

    from schemas.approval import ApprovalDecision

    try:
        decision = ApprovalDecision(
            decision=verdict, note=note, approver=approver or getpass.getuser()
        )
    except ValidationError as exc:
        raise fail(f"invalid decision: {exc.errors()[0]['msg']}") from None
    try:
        resume_flow_run(run_id, run_input=decision.model_dump())
    except ObjectNotFound:
        raise fail(
            f"no flow run {run_id} on the Prefect server at {PREFECT_API_URL.value() or '(none set)'}; "
            "set PREFECT_API_URL to the server that runs it",
            code=1,
        ) from None
    except NotPausedError:
        raise fail(f"flow run {run_id} is not waiting for approval", code=1) from None
    except FlowPauseTimeout:
        raise fail(
            f"flow run {run_id} waited past its approval timeout: it was rejected", code=1
        ) from None
    except RuntimeError as exc:  # the server refused the input
        raise fail(f"Prefect refused the decision for flow run {run_id}: {exc}", code=1) from None
    typer.echo(f"flow run {run_id}: {verdict}d by {decision.approver}")
