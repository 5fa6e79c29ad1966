"""The Prefect-native request for a fine-tune: `lmft request-finetune` emits
`lmft.finetune.requested`, and the trigger declared on the `finetune` deployment in
prefect.yaml (applied as `prefect deploy` applies it) starts a run with that request."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
from pydantic import TypeAdapter
from typer.testing import CliRunner

from cli import app
from operations.finetune_requests import FINETUNE_REQUESTED, emit_finetune_request
from schemas.request import DatasetSource, FineTuneRequest

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = "finetune-on-request"


@pytest.fixture(scope="module")
def triggered_deployment(prefect_server) -> str:
    """The `finetune` flow deployed with the triggers prefect.yaml declares for `finetune`."""
    from prefect.events import DeploymentTriggerTypes

    from flows.finetune import finetune

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    [declared] = [d for d in spec["deployments"] if d["name"] == "finetune"]
    triggers = [
        TypeAdapter(DeploymentTriggerTypes).validate_python(t) for t in declared["triggers"]
    ]
    assert [t.expect for t in triggers] == [{FINETUNE_REQUESTED}]
    finetune.to_deployment(name=DEPLOYMENT, triggers=triggers).apply()
    return DEPLOYMENT


def runs_of_deployment(timeout: float = 0, count: int = 1) -> list:
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[DEPLOYMENT]))
            )
        if len(runs) >= count or time.monotonic() >= deadline:
            return runs
        time.sleep(0.5)


def test_an_emitted_request_starts_a_finetune_run_with_it(triggered_deployment) -> None:
    request = FineTuneRequest(
        dataset=DatasetSource(path=str(ROOT / "examples" / "pirate_chat.jsonl")),
        hyperparameters={"max_steps": 3},
        gguf=None,
        deploy=None,
    )
    event = emit_finetune_request(request, idempotency_key="request-1")
    assert event.resource.id == "lmft.finetune-request.request-1"
    [run] = runs_of_deployment(timeout=120)
    assert run.parameters["idempotency_key"] == "request-1"
    assert FineTuneRequest.model_validate(run.parameters["request"]) == request


def test_the_command_checks_the_request_before_emitting(triggered_deployment) -> None:
    before = len(runs_of_deployment())
    runner = CliRunner()
    refused = runner.invoke(
        app, ["request-finetune", "--dataset", "examples/pirate_chat.jsonl", "--method", "rlhf"]
    )
    assert refused.exit_code == 2 and "method" in refused.output
    done = runner.invoke(
        app,
        [
            "request-finetune",
            "--dataset",
            str(ROOT / "examples" / "pirate_chat.jsonl"),
            "--key",
            "request-2",
        ],
    )
    assert done.exit_code == 0, done.output
    assert "lmft.finetune-request.request-2" in done.output
    runs = runs_of_deployment(timeout=120, count=before + 1)
    assert len(runs) == before + 1
    assert any(r.parameters["idempotency_key"] == "request-2" for r in runs)
