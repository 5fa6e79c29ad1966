"""The `finetune` flow on `backend: hf-jobs`, against a local Hugging Face service that runs what
it is given (tests/doubles/hf_jobs_server.py): the job installs its pinned requirements (checked
against PyPI's releases), really trains with training/train.py, pushes the model and adapter to
the double's Hub; the GGUF step downloads them back and uploads the GGUFs. The credentials are
only in the `HuggingFaceCredentials` Block: no HF_TOKEN, no login, an empty Hugging Face cache.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from pydantic import SecretStr
from typer.testing import CliRunner

from blocks.budget import BudgetPolicy
from blocks.huggingface import HuggingFaceCredentials, _load_block
from flows.finetune import finetune
from schemas.costs import cost_of_running
from schemas.request import Backend, DatasetSource, FineTuneRequest
from tasks.costs.ledger import Ledger, ReservationStatus
from tests.doubles.hf_jobs_server import TERMINAL, HfJobsServer
from tests.tasks.jobs.test_hf import _logs_and_artifacts

ROOT = Path(__file__).resolve().parents[2]
PIRATE = ROOT / "examples" / "pirate_chat.jsonl"


@pytest.fixture
def hub(monkeypatch, tmp_path, tiny_llama, prefect_server):
    """The double, holding a private tiny base model; the worker knows it only through the Block."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("HF_TOKEN", "LMFT_HF_NAMESPACE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    # an empty cache and no stored login: every Hub read must go through the Block's credentials
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with HfJobsServer() as server:
        server.repos.seed_folder(f"{server.namespace}/tiny-llama", tiny_llama, private=True)
        block = f"hf-{uuid.uuid4().hex[:8]}"
        HuggingFaceCredentials(
            token=SecretStr(server.token), namespace=server.namespace, endpoint=server.url
        ).save(block)
        monkeypatch.setenv("LMFT_HF_CREDENTIALS_BLOCK", block)
        _load_block.cache_clear()
        server.block = block
        yield server
    _load_block.cache_clear()


@pytest.fixture
def ledger(prefect_server, tmp_path):
    """A budget policy (and its ledger) that lets a small paid run through without approval."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    BudgetPolicy(
        monthly_limit_usd=100, approval_threshold_usd=50, per_job_max_usd=50, ledger_url=url
    ).save("default", overwrite=True)
    yield Ledger(url)
    BudgetPolicy.delete("default")


def hf_request(server: HfJobsServer, *, model: str = "tiny-llama", **overrides) -> FineTuneRequest:
    fields = {
        "base_model": f"{server.namespace}/{model}",
        "dataset": DatasetSource(path=str(PIRATE)),
        "backend": Backend.HF_JOBS,
        "output_name": "tiny-pirate",
        "hyperparameters": {"max_steps": 2, "batch_size": 2, "max_length": 64},
        "gguf": None,
        "deploy": None,
    }
    return FineTuneRequest(**{**fields, **overrides})


def _files_containing(root: Path, secret: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_paid_run_trains_pushes_converts_and_uploads_with_block_credentials_only(
    hub, ledger, lmft_home, tmp_path
):
    import asyncio

    request = hf_request(
        hub, gguf={"quant_types": ["Q8_0"], "prompts": ["Hello?"], "max_answer_tokens": 8}
    )

    state = finetune(request, idempotency_key=f"hf-e2e-{uuid.uuid4().hex[:6]}", return_state=True)

    assert state.is_completed(), state.message
    summary = state.result()
    [job] = hub.jobs.values()
    assert job.stage == "COMPLETED"
    # the job installed public CUDA-capable releases and ran the uploaded script
    command = job.spec["command"]
    assert command[:2] == ["uv", "run"] and "--with" in command and "/data/train.py" in command
    assert "torch==2.13.0" in command and not any("+" in part for part in command)
    logs = "\n".join(line for _, line in job.logs)
    assert "LMFT_RESULT" in logs and "LMFT_PROGRESS" in logs
    # it trained the private base model it downloaded from the Hub, and pushed model + adapter
    pushed = hub.repos.get(f"{hub.namespace}/tiny-pirate")
    assert pushed is not None and pushed.private
    files = pushed.commits[-1].files
    assert {"model.safetensors", "config.json", "adapter/adapter_model.safetensors"} <= set(files)
    assert summary.hub_repo == f"{hub.namespace}/tiny-pirate"
    # the GGUF step read it back (Block token: the repo is private) and uploaded the GGUF repo
    gguf_repo = hub.repos.get(f"{hub.namespace}/tiny-pirate-GGUF")
    assert gguf_repo is not None
    uploaded = gguf_repo.commits[-1].files
    assert any(name.endswith("-Q8_0.gguf") for name in uploaded) and "README.md" in uploaded
    assert uploaded[next(n for n in uploaded if n.endswith("-Q8_0.gguf"))][:4] == b"GGUF"
    # every authenticated call carried the Block's token; nothing was read anonymously
    assert not [r for r in hub.requests if r[2] == 401]
    # the budget: settled at the job's running time as the service reports it
    [entry] = ledger.entries(flow_run_id=str(state.state_details.flow_run_id))
    assert entry.status is ReservationStatus.SETTLED
    secret = hub.token
    text = asyncio.run(_logs_and_artifacts(state.state_details.flow_run_id))
    assert secret not in text and secret not in summary.model_dump_json()
    assert secret not in logs and secret not in json.dumps(job.info())
    leaked = [
        path
        for root in (lmft_home, tmp_path, Path(hub.processes[job.id].root))
        for path in _files_containing(root, secret.encode())
    ]
    assert leaked == []
    assert all(secret.encode() not in data for data in files.values())


def test_a_failing_script_fails_the_run_with_the_job_id_and_its_last_lines(
    hub, ledger, tiny_llama, tmp_path
):
    # A base model without weights passes validation and the estimate (tokenizer and config
    # are there) and fails inside the job: train.py exits 1 when it loads the model.
    weightless = tmp_path / "weightless"
    shutil.copytree(tiny_llama, weightless, ignore=shutil.ignore_patterns("*.safetensors"))
    hub.repos.seed_folder(f"{hub.namespace}/weightless", weightless, private=True)

    state = finetune(hf_request(hub, model="weightless"), return_state=True)

    assert state.is_failed()
    [job] = hub.jobs.values()
    assert job.stage == "ERROR" and job.message == "Job failed with exit code: 1"
    assert job.id in state.message and "Job failed with exit code: 1" in state.message
    assert "Traceback" in state.message or "Error" in state.message  # the job's own last lines
    [entry] = ledger.entries(flow_run_id=str(state.state_details.flow_run_id))
    assert not entry.is_open and entry.reserved_usd == 0
    running = hub.jobs[job.id].info()["durations"]["runningSecs"]
    assert entry.actual_usd == pytest.approx(cost_of_running(entry.price_per_hour, running))
    assert hub.token not in state.message


def test_lmft_cancel_during_training_cancels_the_job_and_ends_the_run_cancelled(
    hub, ledger, tmp_path
):
    config = tmp_path / "job.yaml"
    config.write_text(
        json.dumps(
            {
                "base_model": f"{hub.namespace}/tiny-llama",
                "dataset": {"path": str(PIRATE)},
                "backend": "hf-jobs",
                "output_name": "cancelled-pirate",
                "hyperparameters": {"max_steps": 500, "batch_size": 2, "max_length": 64},
                "gguf": None,
                "deploy": None,
            }
        )
    )
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE")},
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "LMFT_HF_CREDENTIALS_BLOCK": hub.block,
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "cli", "run", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait(lambda: hub.jobs or worker.poll() is not None, 300, "the job")
        if not hub.jobs:
            raise AssertionError(worker.communicate()[0].decode()[-4000:])
        [job_id] = hub.jobs
        job = hub.jobs[job_id]
        _wait(lambda: any("LMFT_PROGRESS" in line for _, line in job.logs), 240, "training")
        flow_run_id = job.spec["labels"]["flow_run_id"]

        result = CliRunner().invoke(
            __import__("cli").app,
            ["cancel", flow_run_id],
            env={"PREFECT_API_URL": env["PREFECT_API_URL"]},
        )
        output = worker.communicate(timeout=120)[0].decode()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)

    assert result.exit_code == 0, result.output
    assert f"job {job_id} (hf-jobs): cancelled" in result.output
    assert f"flow run {flow_run_id}: Cancelled" in result.output
    assert worker.returncode == 1 and "was cancelled" in output, output[-3000:]
    assert job.stage == "CANCELED" and job.stage in TERMINAL
    with pytest.raises(ProcessLookupError):
        os.kill(job.pid, 0)  # the training process is gone
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(uuid.UUID(flow_run_id)).state.name == "Cancelled"
    [entry] = ledger.entries(flow_run_id=flow_run_id)
    running = job.info()["durations"]["runningSecs"]
    assert entry.actual_usd == pytest.approx(cost_of_running(entry.price_per_hour, running))
    assert not entry.is_open and entry.reserved_usd == 0
    assert hub.token not in output + result.output
