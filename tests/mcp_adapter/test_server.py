"""Every tool through an in-memory `fastmcp.Client`, against real flow runs on the test server."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError

from mcp_adapter.server import server
from schemas.jobs import JobState
from schemas.request import Backend
from tasks.jobs.backends import find_jobs, job_status

pytestmark = pytest.mark.anyio

FINAL = {"completed", "failed", "cancelled", "crashed"}
FINAL_STAGES = {"completed", "failed", "cancelled"}


async def call(name: str, arguments: dict | None = None, **kwargs) -> dict:
    async with Client(server) as client:
        result = await client.call_tool(name, arguments or {}, **kwargs)
    return result.structured_content


async def wait_until(run_id: str, done, timeout: float = 300) -> dict:
    """Poll get_job_status until `done(status)` holds; return the last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = await call("get_job_status", {"run_id": run_id})
        assert status["error"] is None, status["error"]
        if done(status) or time.monotonic() > deadline:
            return status
        await anyio.sleep(1)


async def gather(*calls) -> list:
    """Await the calls concurrently (each starts its own flow run), results in order."""
    results: list = [None] * len(calls)

    async def one(index: int, awaitable) -> None:
        results[index] = await awaitable

    async with anyio.create_task_group() as group:
        for index, awaitable in enumerate(calls):
            group.start_soon(one, index, awaitable)
    return results


@pytest.fixture
async def hf_credentials():
    """The default Hugging Face credentials Block (the worker subprocess reads it by its default
    name), deleted afterwards: it points at the real Hub, which no later test may try to reach."""
    from pydantic import SecretStr

    from blocks.huggingface import DEFAULT_BLOCK_NAME, HuggingFaceCredentials

    await HuggingFaceCredentials(token=SecretStr("hf_" + "x" * 34), namespace="me").save(
        DEFAULT_BLOCK_NAME, overwrite=True
    )
    yield
    await HuggingFaceCredentials.adelete(DEFAULT_BLOCK_NAME)


def request_for(dataset: Path, **overrides) -> dict:
    return {"dataset": {"path": str(dataset)}, **overrides}


async def test_tools_are_typed_and_annotated():
    async with Client(server) as client:
        tools = {tool.name: tool for tool in await client.list_tools()}
    assert set(tools) == {
        "validate_dataset",
        "estimate_cost",
        "create_job",
        "get_job_status",
        "list_jobs",
        "approve_job",
        "reject_job",
        "cancel_job",
        "get_job_logs",
        "convert_to_gguf",
        "deploy_model",
        "get_costs",
        "list_models",
        "get_model",
    }
    for tool in tools.values():
        assert tool.output_schema["properties"]["error"], tool.name
        assert tool.description
    assert tools["get_job_status"].annotations.read_only_hint is True
    for reader in ("list_models", "get_model"):
        assert tools[reader].annotations.read_only_hint is True
    assert "rollback" in tools["deploy_model"].input_schema["properties"]
    for spender in ("create_job", "approve_job"):
        assert tools[spender].annotations.destructive_hint is True
        assert tools[spender].meta["spends_money"] is True
    request_schema = tools["create_job"].input_schema["properties"]["request"]
    assert "dataset" in request_schema["required"]


@pytest.mark.parametrize(
    ("tool", "arguments", "message"),
    [
        ("get_job_status", {"run_id": "not-a-run"}, "run_id"),
        ("create_job", {}, "request"),
        ("create_job", {"request": {"dataset": {"path": "/no/such/file.jsonl"}}}, "does not exist"),
        ("create_job", {"request": {"dataset": {"path": "x.jsonl"}, "colour": "red"}}, "colour"),
        (
            "validate_dataset",
            {"request": {"dataset": {"path": "a/b"}}, "wait_seconds": 9999},
            "wait_seconds",
        ),
        (
            "create_job",
            {"request": {"dataset": {"path": "a/b"}}, "idempotency_key": "no spaces"},
            "idempotency_key",
        ),
        ("list_jobs", {"states": ["sleeping"]}, "states"),
        ("get_job_logs", {"run_id": str(uuid.uuid4()), "lines": 0}, "lines"),
        ("deploy_model", {"gguf_path": "m.gguf", "name": "Bad Name; rm -rf"}, "name"),
        ("get_costs", {"month": "2026-13"}, "month"),
    ],
)
async def test_bad_arguments_are_tool_errors(tool: str, arguments: dict, message: str):
    with pytest.raises(ToolError, match=message):
        await call(tool, arguments)


async def test_unknown_run_is_an_error_result(prefect_server):
    missing = str(uuid.uuid4())
    for tool in ("get_job_status", "get_job_logs", "cancel_job", "approve_job", "reject_job"):
        result = await call(tool, {"run_id": missing})
        assert result["error"].startswith(f"no flow run with id {missing}"), tool


async def test_missing_deployment_says_how_to_create_it(prefect_server):
    result = await call("convert_to_gguf", {"model": "me/model"})
    assert "deployment 'convert/convert' not found" in result["error"]
    assert "prefect deploy --all" in result["error"]
    assert result["run"] is None


async def test_get_costs_and_deploy_model_start_their_flows(flow_worker):
    costs, started = await gather(
        call("get_costs", {"month": "2026-11"}),
        call("deploy_model", {"gguf_path": "/no/such/model.gguf", "name": "ghost"}),
    )
    assert costs["error"] is None and costs["run"]["state"] == "completed"
    (report,) = [a for a in costs["artifacts"] if a["key"] == "cost-report"]
    assert report["type"] == "table" and isinstance(report["data"], list)

    assert started["error"] is None and started["run"]["flow"] == "deploy"
    status = await wait_until(
        started["run"]["id"], lambda s: s["run"]["state"] in FINAL, timeout=180
    )
    assert status["run"]["state"] == "failed"
    assert "/no/such/model.gguf" in status["run"]["state_message"]
    assert status["gate"] is None


async def test_list_models_and_get_model_read_the_registry(flow_worker):
    """The `models` flow reads the registry the worker shares with this process."""
    from tasks.registry import model_registry
    from tests.tasks.registry.test_store import model, served

    def record() -> None:
        registry = model_registry()
        registry.register(model("mcp-a1", eval_loss=1.5, name="mcp-pirate"))
        registry.record_deployment(served("mcp-a1", name="mcppirate"), model_id="mcp-a1")

    await anyio.to_thread.run_sync(record)
    everything, one, missing = await gather(
        call("list_models"),
        call("get_model", {"name": "mcp-pirate"}),
        call("get_model", {"name": "nobody-at-all"}),
    )
    assert everything["error"] is None, everything
    assert "mcp-a1" in [m["id"] for m in everything["registry"]["models"]]
    (entry,) = one["registry"]["models"]
    assert entry["id"] == "mcp-a1" and entry["serving"] == ["local/mcppirate"]
    assert entry["eval_loss"] == 1.5 and entry["deployments"][0]["name"] == "mcppirate"
    assert missing["registry"] is None and "no model named 'nobody-at-all'" in missing["error"]


async def test_convert_to_gguf_then_deploy_model_run_to_completion(
    flow_worker, tiny_llama: Path, chat_dataset: Path
):
    """The tiny llama → GGUF (a `convert` run) → a local llama.cpp server that answers (a `deploy`
    run), each started by its tool with the flow's own parameter types and followed by its status."""
    import httpx

    from tasks.serving.local import stop_local_server

    converting = await call(
        "convert_to_gguf",
        {
            "model": str(tiny_llama),
            "settings": {"quant_types": ["Q8_0"], "prompts": ["Hello?"], "max_answer_tokens": 8},
            "dataset": {"path": str(chat_dataset)},
        },
    )
    assert converting["error"] is None and converting["run"]["flow"] == "convert"
    converted = await wait_until(
        converting["run"]["id"], lambda s: s["stage"] in FINAL_STAGES, timeout=600
    )
    assert converted["run"]["state"] == "completed", converted["run"]["state_message"]
    assert converted["stage"] == "completed" and converted["gate"] is None
    gguf = converted["links"]["gguf"]
    assert gguf.endswith(".gguf") and Path(gguf).exists()

    try:
        deploying = await call("deploy_model", {"gguf_path": gguf, "name": "tinymcp"})
        assert deploying["error"] is None and deploying["run"]["flow"] == "deploy"
        deployed = await wait_until(
            deploying["run"]["id"], lambda s: s["stage"] in FINAL_STAGES, timeout=300
        )
        assert deployed["run"]["state"] == "completed", deployed["run"]["state_message"]
        url = deployed["links"]["serving"]
        models = httpx.get(f"{url.rstrip('/')}/v1/models", timeout=30).json()
        assert models["data"], "the deployed model is listed by its server"
    finally:
        stop_local_server("tinymcp")


async def test_validate_dataset_returns_the_report(flow_worker, chat_dataset: Path):
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async def validate_good() -> tuple[dict, dict]:
        """Return at the wait bound, then pick the same run up again by its key."""
        started = await call(
            "validate_dataset", {"request": request_for(chat_dataset), "wait_seconds": 0}
        )
        finished = await call(
            "validate_dataset",
            {"request": request_for(chat_dataset), "idempotency_key": started["idempotency_key"]},
            progress_handler=on_progress,
        )
        return started, finished

    (started, good), bad = await gather(
        validate_good(),
        call("validate_dataset", {"request": request_for(chat_dataset, method="dpo")}),
    )
    assert started["finished"] is False
    assert f"idempotency_key={started['idempotency_key']!r}" in started["error"]

    assert good["error"] is None
    assert good["run"]["id"] == started["run"]["id"]
    assert good["valid"] is True and good["finished"] is True
    assert good["report"]["row_count"] == 12 and good["report"]["columns"] == ["messages"]
    assert good["run"]["state"] == "completed" and good["run"]["ui_url"].endswith(good["run"]["id"])
    assert progress, "the tool reports progress while the run executes"

    assert bad["valid"] is False
    assert [e["code"] for e in bad["report"]["errors"]] == ["unsuitable_format"]


async def test_estimate_cost_validates_then_estimates(flow_worker, chat_dataset: Path):
    result, invalid = await gather(
        call("estimate_cost", {"request": request_for(chat_dataset)}),
        call("estimate_cost", {"request": request_for(chat_dataset, method="kto")}),
    )
    assert result["error"] is None
    assert result["estimate"]["backend"] == "local" and result["estimate"]["expected_usd"] == 0.0
    assert invalid["estimate"] is None
    assert "DatasetInvalid" in invalid["error"] and invalid["run"]["state"] == "failed"


async def test_cancel_job_on_a_run_not_started(flow_worker):
    from prefect.deployments import arun_deployment

    from tests.mcp_adapter.flow_worker import APPROVAL_PROBE

    run = await arun_deployment(
        APPROVAL_PROBE,
        timeout=0,
        as_subflow=False,
        scheduled_time=datetime.now(UTC) + timedelta(hours=1),
    )
    result = await call("cancel_job", {"run_id": str(run.id), "wait_seconds": 0})
    assert result["error"] is None
    assert result["cancelled"] is True and result["run"]["state"] == "cancelled"


async def test_approve_and_reject_resume_the_paused_run(flow_worker):
    from prefect.deployments import arun_deployment

    from tests.mcp_adapter.flow_worker import APPROVAL_PROBE

    runs = [await arun_deployment(APPROVAL_PROBE, timeout=0, as_subflow=False) for _ in range(2)]
    for run in runs:
        status = await wait_until(str(run.id), lambda s: s["gate"] is not None, timeout=120)
        assert status["gate"] == "awaiting_approval" and status["run"]["state"] == "paused"

    approved = await call(
        "approve_job", {"run_id": str(runs[0].id), "note": "fits the budget", "approver": "ana"}
    )
    rejected = await call("reject_job", {"run_id": str(runs[1].id), "note": "too dear"})
    assert approved["error"] is None and approved["approved"] is True
    assert rejected["error"] is None and rejected["approved"] is False

    again = await call("approve_job", {"run_id": str(runs[0].id)})
    assert "is not waiting for approval" in again["error"]

    from prefect import get_client

    decisions = []
    for run in runs:
        await wait_until(str(run.id), lambda s: s["run"]["state"] in FINAL, timeout=120)
        async with get_client() as client:
            finished = await client.read_flow_run(run.id)
        decisions.append(await finished.state.aresult())
    assert (decisions[0].decision, decisions[0].note, decisions[0].approver) == (
        "approve",
        "fits the budget",
        "ana",
    )
    assert (decisions[1].decision, decisions[1].note) == ("reject", "too dear")


async def test_paid_job_waits_at_the_budget_gate_and_is_rejected(
    flow_worker, hf_credentials, embedded_base_model: Path, chat_dataset: Path, tmp_path: Path
):
    """The real gate of the finetune flow: a paid estimate above the threshold pauses the run."""
    from blocks.budget import BudgetPolicy
    from tasks.costs.ledger import Decision, Ledger

    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    await BudgetPolicy(
        monthly_limit_usd=1000, approval_threshold_usd=0, per_job_max_usd=1000, ledger_url=ledger
    ).save("default", overwrite=True)
    # hf_credentials: checked before the gate; the rejected run never uses them
    request = request_for(
        chat_dataset, backend="hf-jobs"
    )  # the embedded default, trained on the Hub

    created = await call("create_job", {"request": request, "wait_seconds": 120})
    assert created["error"] is None
    assert created["gate"] == "awaiting_approval" and created["approval_required"] is True
    assert created["estimate"]["backend"] == "hf-jobs" and created["estimate"]["high_usd"] > 0
    run_id = created["run"]["id"]

    rejected = await call(
        "reject_job", {"run_id": run_id, "note": "not this month", "approver": "ana"}
    )
    assert rejected["error"] is None
    status = await wait_until(run_id, lambda s: s["run"]["state"] in FINAL, timeout=120)
    assert status["run"]["state"] == "failed" and "rejected" in status["run"]["state_message"]
    assert status["gate"] == "stopped"
    (entry,) = Ledger(ledger).entries(flow_run_id=run_id)
    assert (entry.decision, entry.approver, entry.note) == (
        Decision.REJECTED,
        "ana",
        "not this month",
    )


async def test_jobs_complete_and_cancel(flow_worker, chat_dataset: Path, tiny_llama: Path):
    """Two fine-tuning jobs of the tiny model at once: one runs to completion, one is cancelled."""
    await gather(
        complete_a_job(chat_dataset, tiny_llama), cancel_a_running_job(chat_dataset, tiny_llama)
    )


async def complete_a_job(chat_dataset: Path, tiny_llama: Path) -> None:
    request = request_for(
        chat_dataset,
        base_model=str(tiny_llama),
        output_name="tiny-pirate",
        gguf=None,
        deploy=None,
        hyperparameters={"max_steps": 3, "batch_size": 2, "max_length": 64},
    )
    created = await call(
        "create_job", {"request": request, "idempotency_key": "e2e-tiny-pirate", "wait_seconds": 60}
    )
    assert created["error"] is None
    run_id = created["run"]["id"]
    assert created["idempotency_key"] == "e2e-tiny-pirate"

    repeated = await call(
        "create_job", {"request": request, "idempotency_key": "e2e-tiny-pirate", "wait_seconds": 0}
    )
    assert repeated["run"]["id"] == run_id
    other = dict(request, output_name="another-name")
    clash = await call(
        "create_job", {"request": other, "idempotency_key": "e2e-tiny-pirate", "wait_seconds": 0}
    )
    assert "different request" in clash["error"]

    status = await wait_until(run_id, lambda s: s["gate"] != "not_reached")
    if (
        status["gate"] == "awaiting_approval"
    ):  # the budget gate asks for approval above its threshold
        assert (await call("approve_job", {"run_id": run_id, "note": "e2e"}))["error"] is None
    status = await wait_until(run_id, lambda s: s["run"]["state"] in FINAL)
    assert status["run"]["state"] == "completed", status["run"]["state_message"]
    assert status["gate"] == "passed"
    assert status["progress"]["percent"] == 100.0
    assert status["progress"]["step"] == status["progress"]["total_steps"] == 3
    assert status["progress"]["loss"] > 0
    assert status["estimate"]["backend"] == "local"
    assert status["cost_so_far_usd"] == 0.0
    assert "tiny-pirate" in status["summary_markdown"]
    assert Path(status["links"]["model"], "config.json").exists()
    assert status["progress"]["job_state"] == "completed"

    logs = await call("get_job_logs", {"run_id": run_id, "lines": 200})
    assert any("step 3/3" in line["message"] for line in logs["lines"])

    listed = await call("list_jobs", {"states": ["completed"]})
    assert run_id in [job["id"] for job in listed["jobs"]]
    assert run_id not in [
        job["id"] for job in (await call("list_jobs", {"states": ["running"]}))["jobs"]
    ]
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (await call("list_jobs", {"since": later}))["jobs"] == []


async def cancel_a_running_job(chat_dataset: Path, tiny_llama: Path) -> None:
    request = request_for(
        chat_dataset,
        base_model=str(tiny_llama),
        output_name="tiny-cancelled",
        gguf=None,
        deploy=None,
        hyperparameters={"max_steps": 1_000_000, "batch_size": 2, "max_length": 64},
    )
    created = await call("create_job", {"request": request, "wait_seconds": 0})
    run_id = created["run"]["id"]
    status = await wait_until(
        run_id, lambda s: (s["progress"] or {}).get("step") or s["run"]["state"] in FINAL
    )
    assert status["run"]["state"] == "running" and status["progress"]["step"] >= 1

    cancelled = await call("cancel_job", {"run_id": run_id, "wait_seconds": 60})
    assert cancelled["error"] is None and cancelled["cancelled"] is True
    assert cancelled["run"]["state"] == "cancelled"

    (handle,) = find_jobs(Backend.LOCAL, {"flow_run_id": run_id})
    deadline = time.monotonic() + 60
    while job_status(handle).state is not JobState.CANCELLED and time.monotonic() < deadline:
        await anyio.sleep(0.5)
    assert job_status(handle).state is JobState.CANCELLED

    again = await call("cancel_job", {"run_id": run_id})
    assert "already ended" in again["error"]


@pytest.fixture
async def approve_every_run(prefect_server, tmp_path: Path):
    """The `default` BudgetPolicy with `require_approval_for_all_runs`, and its ledger; the previous one after."""
    from blocks.budget import BUDGET_BLOCK_NAME, BudgetPolicy
    from tasks.costs.ledger import Ledger

    try:
        previous = await BudgetPolicy.aload(BUDGET_BLOCK_NAME)
    except ValueError:
        previous = None
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    await BudgetPolicy(
        monthly_limit_usd=100,
        approval_threshold_usd=10,
        per_job_max_usd=50,
        approval_timeout_seconds=600,
        require_approval_for_all_runs=True,
        ledger_url=url,
    ).save(BUDGET_BLOCK_NAME, overwrite=True)
    try:
        yield Ledger(url)
    finally:  # the other tests' local runs must not wait for an approval
        if previous is None:
            await BudgetPolicy.adelete(BUDGET_BLOCK_NAME)
        else:
            await previous.save(BUDGET_BLOCK_NAME, overwrite=True)


async def test_local_job_waits_for_approval_then_completes(
    flow_worker, approve_every_run, chat_dataset: Path, tiny_llama: Path
):
    """A free local run under `require_approval_for_all_runs`: create_job → paused → approve_job → completed."""
    from tasks.costs.ledger import Decision, ReservationStatus

    ledger = approve_every_run
    tiny = {
        "base_model": str(tiny_llama),
        "gguf": None,
        "deploy": None,
        "hyperparameters": {"max_steps": 2, "batch_size": 2, "max_length": 64},
    }
    approved_request = request_for(chat_dataset, output_name="tiny-approved", **tiny)
    rejected_request = request_for(chat_dataset, output_name="tiny-rejected", **tiny)
    created, refused = await gather(
        call("create_job", {"request": approved_request, "wait_seconds": 0}),
        call("create_job", {"request": rejected_request, "wait_seconds": 0}),
    )
    run_id, refused_id = created["run"]["id"], refused["run"]["id"]

    for paused_id in (run_id, refused_id):
        status = await wait_until(
            paused_id, lambda s: s["run"]["state"] in FINAL | {"paused"}, timeout=240
        )
        assert status["run"]["state"] == "paused", status["run"]["state_message"]
        assert status["gate"] == "awaiting_approval"
        assert status["estimate"]["backend"] == "local" and status["estimate"]["high_usd"] == 0.0
        assert (
            status["progress"] is None or status["progress"]["step"] is None
        )  # nothing trained yet
    again = await call(
        "create_job", {"request": approved_request, "idempotency_key": created["idempotency_key"]}
    )
    assert again["run"]["id"] == run_id and again["approval_required"] is True

    approved = await call(
        "approve_job", {"run_id": run_id, "approver": "ana", "note": "fine on the lab box"}
    )
    rejected = await call(
        "reject_job", {"run_id": refused_id, "approver": "bo", "note": "wrong dataset"}
    )
    assert approved["error"] is None and approved["approved"] is True
    assert rejected["error"] is None and rejected["approved"] is False

    status, stopped = await gather(
        wait_until(run_id, lambda s: s["run"]["state"] in FINAL),
        wait_until(refused_id, lambda s: s["run"]["state"] in FINAL, timeout=120),
    )
    assert status["run"]["state"] == "completed", status["run"]["state_message"]
    assert status["gate"] == "passed"
    assert status["progress"]["step"] == status["progress"]["total_steps"] == 2
    assert status["progress"]["loss"] > 0
    assert status["cost_so_far_usd"] == 0.0
    assert stopped["run"]["state"] == "failed" and "bo rejected" in stopped["run"]["state_message"]
    assert stopped["gate"] == "stopped"

    (entry,) = ledger.entries(flow_run_id=run_id)
    assert (entry.decision, entry.approver, entry.note) == (
        Decision.APPROVED,
        "ana",
        "fine on the lab box",
    )
    assert entry.status is ReservationStatus.SETTLED and entry.actual_usd == 0.0
    (refusal,) = ledger.entries(flow_run_id=refused_id)
    assert (refusal.decision, refusal.approver, refusal.note) == (
        Decision.REJECTED,
        "bo",
        "wrong dataset",
    )
    assert refusal.status is ReservationStatus.RELEASED
    logs = await call("get_job_logs", {"run_id": run_id, "lines": 200})
    assert any(
        "ana approved the run: fine on the lab box" in line["message"] for line in logs["lines"]
    )


async def test_a_key_whose_run_ended_failed_returns_that_run_with_an_error(
    flow_worker, chat_dataset: Path
):
    """A key always returns its run; one that ended without completing says so, and what to do."""
    request = request_for(chat_dataset, deploy={"target": "no-such-target"})  # refused early
    key = f"fails-{uuid.uuid4().hex[:8]}"
    first = await call(
        "create_job", {"request": request, "idempotency_key": key, "wait_seconds": 1}
    )
    await wait_until(first["run"]["id"], lambda s: s["run"]["state"] in FINAL, timeout=240)

    again = await call(
        "create_job", {"request": request, "idempotency_key": key, "wait_seconds": 1}
    )

    assert again["run"]["id"] == first["run"]["id"] and again["run"]["state"] == "failed"
    assert again["error"] is not None
    assert f"idempotency_key {key!r} ended Failed" in again["error"]
    assert "no-such-target" in again["error"] and "new idempotency_key" in again["error"]
