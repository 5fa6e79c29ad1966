"""Publish a run's `RunStatus`: one artifact updated in place, one Prefect event per change.

Whatever runs inside a flow run (the flow body, its tasks, the training monitor's thread)
changes that run's status through the functions below, and so do the run's state hooks, from
whichever process runs them. Every change is written at once, so a reader (the MCP adapter,
`lmft status`) sees it on its next poll. Outside a flow run there is no status to publish and
the functions do nothing.

    with stage(Stage.VALIDATING):      # the stage, and its wall time once it is done
        report = validate_dataset(...)
    publish_estimate(estimate)          # the gate's estimate
    publish_gate(GateDecision.AWAITING_APPROVAL, reserved_usd=..., timeout_seconds=...)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.events import emit_event
from prefect.exceptions import PrefectHTTPStatusError
from prefect.runtime import flow_run as current_flow_run

from schemas.costs import CostEstimate
from schemas.gguf import ConversionResult
from schemas.serving import ServedModel
from schemas.status import (
    STATUS_ARTIFACT_KEY,
    STATUS_ARTIFACT_TYPE,
    STATUS_EVENT_PREFIX,
    GateDecision,
    RunLinks,
    RunStatus,
    Stage,
    TrainingProgress,
)

logger = logging.getLogger(__name__)

STEP_NAMES = {
    Stage.PREPARING: "prepare model",
    Stage.VALIDATING: "validate",
    Stage.ESTIMATING: "estimate",
    Stage.BUDGET: "budget",
    Stage.TRAINING: "train",
    Stage.SAMPLING: "sample answers",
    Stage.CONVERTING: "gguf",
    Stage.PROMOTING: "promote",
    Stage.DEPLOYING: "deploy",
}
"""How `RunStatus.step_seconds` (and the summary's wall-time table) names each stage."""


class StatusBoard:
    """One flow run's status and the artifact that shows it; safe to change from any thread."""

    def __init__(self, status: RunStatus, artifact_id: UUID) -> None:
        self.status, self.artifact_id = status, artifact_id
        self._lock = threading.Lock()

    def change(self, part: str, **fields: Any) -> RunStatus:
        """Set `fields` of the status, rewrite the artifact, emit `lmft.finetune.<part>`."""
        with self._lock:
            self.status = self.status.model_copy(update={**fields, "updated_at": datetime.now(UTC)})
            data = self.status.model_dump(mode="json")
            try:
                with get_client(sync_client=True) as client:
                    client.update_artifact(
                        self.artifact_id,
                        ArtifactUpdate(data=data, description=status_card(self.status)),
                    )
            except (httpx.HTTPError, PrefectHTTPStatusError) as exc:
                # A status the API missed is repaired by the next change; the run goes on.
                logger.warning(
                    "could not update the status of flow run %s: %s", self.status.flow_run_id, exc
                )
            emit_event(
                event=f"{STATUS_EVENT_PREFIX}{part}",
                resource={
                    "prefect.resource.id": f"prefect.flow-run.{self.status.flow_run_id}",
                    "prefect.resource.role": "flow-run",
                },
                payload=data,
            )
            return self.status


_boards: dict[str, StatusBoard] = {}
_boards_lock = threading.Lock()


def status_board(
    flow_run_id: str | UUID | None = None, flow: str | None = None
) -> StatusBoard | None:
    """The status board of `flow_run_id` (default: the current flow run); None outside a run.

    The first call in a process reads the run's status artifact back (a run resumed in another
    process continues its status) or creates it.
    """
    run_id = str(flow_run_id or current_flow_run.id or "")
    if not run_id:
        return None
    with _boards_lock:
        board = _boards.get(run_id)
        if board is None:
            board = _boards[run_id] = _open_board(run_id, flow or current_flow_run.flow_name or "")
    return board


def _open_board(run_id: str, flow: str) -> StatusBoard:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[STATUS_ARTIFACT_KEY]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)]),
            ),
            limit=1,
        )
        if found:
            return StatusBoard(RunStatus.model_validate(found[0].data), found[0].id)
        status = RunStatus(flow_run_id=run_id, flow=flow)
        artifact = client.create_artifact(
            ArtifactCreate(
                key=STATUS_ARTIFACT_KEY,
                type=STATUS_ARTIFACT_TYPE,
                data=status.model_dump(mode="json"),
                description=status_card(status),
                flow_run_id=UUID(run_id),
            )
        )
    return StatusBoard(status, artifact.id)


def current_status() -> RunStatus:
    """The current flow run's status, as last published."""
    board = status_board()
    if board is None:
        raise RuntimeError("current_status() reads the status of a flow run: call it inside one")
    return board.status


def publish(part: str, **fields: Any) -> RunStatus | None:
    """Change the current flow run's status (no-op outside a flow run)."""
    board = status_board()
    return board.change(part, **fields) if board else None


def publish_stage(name: Stage) -> None:
    """The run entered stage `name`."""
    publish("stage", stage=name)


@contextmanager
def stage(name: Stage) -> Iterator[None]:
    """Publish that the run entered stage `name`; once the block is done, its wall time."""
    publish_stage(name)
    started = time.monotonic()
    yield
    board = status_board()
    if board is not None:
        seconds = {
            **board.status.step_seconds,
            STEP_NAMES.get(name, name.value): round(time.monotonic() - started, 2),
        }
        board.change("stage", step_seconds=seconds)


def publish_estimate(estimate: CostEstimate) -> None:
    """The estimate the budget gate will judge."""
    board = status_board()
    if board is not None:
        board.change("gate", gate=board.status.gate.model_copy(update={"estimate": estimate}))


def publish_gate(decision: GateDecision, **fields: Any) -> None:
    """The budget gate's decision (and reserved_usd, timeout_seconds, approver, note)."""
    board = status_board()
    if board is not None:
        gate = board.status.gate.model_copy(update={"decision": decision, **fields})
        board.change("gate", gate=gate)


def publish_training(**fields: Any) -> None:
    """Training progress fields (job_id, job_state, step, total_steps, loss, eval_loss, eta_seconds, ...)."""
    board = status_board()
    if board is not None:
        current = board.status.training or TrainingProgress()
        board.change("progress", training=current.model_copy(update=fields))


def publish_evaluation(step: int, eval_loss: float, base_eval_loss: float | None = None) -> None:
    """An evaluation on the eval split: its loss, the base model's, the best step so far."""
    board = status_board()
    if board is not None:
        current = board.status.training or TrainingProgress()
        board.change("progress", training=current.with_evaluation(step, eval_loss, base_eval_loss))


def publish_cost(cost_so_far_usd: float | None) -> None:
    """Training spend so far."""
    board = status_board()
    if board is not None and cost_so_far_usd != board.status.cost_so_far_usd:
        board.change("cost", cost_so_far_usd=cost_so_far_usd)


def publish_links(**links: str | None) -> None:
    """Links worth a click (hf_job, trackio, model, gguf, gguf_repo, pull_request, serving)."""
    board = status_board()
    if board is not None:
        known = {k: v for k, v in links.items() if v}
        board.change("links", links=board.status.links.model_copy(update=known))


def publish_gguf(result: ConversionResult) -> None:
    """The GGUF that passed the quality gate, and where it was uploaded."""
    publish_links(gguf=result.chosen, gguf_repo=result.hub_url)


def publish_served(model: ServedModel) -> None:
    """Where the deployed model answers, or its pull request."""
    publish_links(serving=model.url, pull_request=model.pull_request_url)


def end_status(flow, flow_run, state) -> None:
    """Flow-run hook (completion, failure, crash, cancellation): the run's final stage and why."""
    board = status_board(flow_run.id, flow.name)
    if board is None:
        return
    if state.is_completed():
        final, message = Stage.COMPLETED, None
    elif state.is_cancelled() or state.is_cancelling():
        final, message = Stage.CANCELLED, state.message
    else:
        final, message = Stage.FAILED, state.message
    board.change("stage", stage=final, message=message)
    with _boards_lock:
        _boards.pop(str(flow_run.id), None)


STATUS_HOOKS = {
    "on_completion": [end_status],
    "on_failure": [end_status],
    "on_crashed": [end_status],
    "on_cancellation": [end_status],
}
"""`@flow(..., **STATUS_HOOKS)`: the flow's status ends with the run."""


def status_card(status: RunStatus) -> str:
    """The status as the short markdown the Prefect UI shows above the data."""
    lines = [f"**{status.flow}**: {status.stage.value}"]
    gate = status.gate
    if gate.estimate is not None or gate.decision is not GateDecision.NOT_REACHED:
        estimate = (
            f" (estimate ${gate.estimate.expected_usd:.2f}, high ${gate.estimate.high_usd:.2f})"
            if gate.estimate
            else ""
        )
        who = f" by {gate.approver}" if gate.approver else ""
        lines.append(f"budget gate: {gate.decision.value}{who}{estimate}")
    if (t := status.training) is not None and t.step is not None:
        eta = f", ETA {t.eta_seconds:.0f} s" if t.eta_seconds is not None else ""
        losses = f", loss {t.loss:.4f}" if t.loss is not None else ""
        losses += f", eval loss {t.eval_loss:.4f}" if t.eval_loss is not None else ""
        lines.append(f"step {t.step}/{t.total_steps}{losses}{eta}")
    if status.cost_so_far_usd is not None:
        lines.append(f"cost so far ${status.cost_so_far_usd:.2f}")
    lines += [
        f"[{name}]({url})" if url.startswith("http") else f"{name}: `{url}`"
        for name, url in _links(status.links)
    ]
    if status.message:
        lines.append(status.message)
    return " · ".join(lines)


def _links(links: RunLinks) -> list[tuple[str, str]]:
    return [(name.replace("_", " "), url) for name, url in links.model_dump().items() if url]
