"""The `finetune` flow refuses a paid run over the budget before anything is submitted."""

from __future__ import annotations

import json
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from blocks.budget import BudgetPolicy
from flows.finetune import finetune
from schemas.request import (
    DEFAULT_BASE_MODEL,
    Backend,
    DatasetSource,
    DeploySettings,
    FineTuneRequest,
)
from tasks.costs.ledger import Ledger


def test_paid_run_over_the_per_job_maximum_fails_before_submission(
    prefect_server, hf_server, embedded_base_model: Path, tmp_path
):
    # A remote backend trains a Hub model; the estimate reads the embedded default's config locally.
    rows = tmp_path / "chat.jsonl"
    rows.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"q{i}"},
                        {"role": "assistant", "content": "a"},
                    ]
                }
            )
            + "\n"
            for i in range(50)
        )
    )
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    BudgetPolicy(
        monthly_limit_usd=1, approval_threshold_usd=0.5, per_job_max_usd=0.001, ledger_url=url
    ).save("default", overwrite=True)
    request = FineTuneRequest(
        base_model=DEFAULT_BASE_MODEL,
        dataset=DatasetSource(path=str(rows)),
        backend=Backend.HF_JOBS,
    )

    state = finetune(request, idempotency_key="over-budget", return_state=True)

    assert state.is_failed() and "per-job maximum of $0.00" in state.message
    assert Ledger(url).entries() == []
    with get_client(sync_client=True) as client:
        ran = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    names = {run.name.rsplit("-", 1)[0] for run in ran}
    assert "estimate-cost" in names and "submit-training" not in names


def task_names(flow_run_id) -> set[str]:
    with get_client(sync_client=True) as client:
        ran = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name.rsplit("-", 1)[0] for run in ran}


def test_unknown_deploy_target_and_local_model_on_hf_jobs_are_refused_before_the_gate(
    prefect_server, hf_server, tiny_llama: Path, tmp_path
):
    rows = tmp_path / "chat.jsonl"
    rows.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"q{i}"},
                        {"role": "assistant", "content": "a"},
                    ]
                }
            )
            + "\n"
            for i in range(20)
        )
    )
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    BudgetPolicy(
        monthly_limit_usd=100, approval_threshold_usd=50, per_job_max_usd=100, ledger_url=url
    ).save("default", overwrite=True)
    request = FineTuneRequest(
        base_model=str(tiny_llama),  # a local folder: a Hugging Face job cannot read it
        dataset=DatasetSource(path=str(rows)),
        backend=Backend.HF_JOBS,
        hardware="t4-small",
        deploy=DeploySettings(target="no-such-target"),
    )

    state = finetune(request, idempotency_key="refused-early", return_state=True)

    assert state.is_failed()
    assert "nothing was reserved, trained or converted" in state.message
    assert "deploy.target: target 'no-such-target' is neither 'local' nor a saved" in state.message
    assert "base_model" in state.message and "local folder" in state.message
    assert Ledger(url).entries() == []  # no reservation
    assert hf_server.jobs == {}  # no job
    names = task_names(state.state_details.flow_run_id)
    assert "preflight" in names
    assert not names & {"reserve-budget", "submit-training", "convert-to-gguf", "deploy-gguf"}
