"""The hf-jobs backend against a local server speaking the Jobs protocol, with the real HfApi."""

from __future__ import annotations

import json
import threading
import time

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Cancelled
from pydantic import SecretStr

from blocks.huggingface import HuggingFaceCredentials, _load_block
from schemas.jobs import TrainingResult
from schemas.request import Backend, DatasetSource, FineTuneRequest
from tasks.costs import CostEstimate
from tasks.jobs.hf import (
    JOB_REQUIREMENTS,
    find_hf_jobs,
    hf_job_logs,
    job_dependencies,
    label_value,
)
from tasks.jobs.hooks import cancel_job_of_flow_run
from tasks.jobs.monitor import MonitorSettings
from tasks.jobs.training import monitor_training, submit_training
from tests.doubles.hf_jobs_server import HfJobsServer

FAST = MonitorSettings(poll_seconds=0.2, metrics_seconds=0.2, stall_seconds=60, log_grace_seconds=5)
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def hf_request(**overrides) -> FineTuneRequest:
    fields = {
        "dataset": DatasetSource(path="trl-lib/Capybara"),
        "backend": Backend.HF_JOBS,
        "output_name": "smol-pirate",
        "gguf": None,
        "deploy": None,
    }
    return FineTuneRequest(**{**fields, **overrides})


@pytest.fixture
def scripted_hf_server(hf_server):
    """The double playing job lives the test scripts (no command runs): protocol-level tests."""
    hf_server.run_jobs = False
    return hf_server


ESTIMATE = CostEstimate(
    backend=Backend.HF_JOBS,
    hardware="a10g-small",
    price_per_hour=1.0,
    low_usd=0.5,
    expected_usd=1.25,
    high_usd=2.0,
    expected_seconds=3600,
    timeout_seconds=7200,
    source="test table",
)


def progress(step: int, total: int = 3) -> str:
    return "LMFT_PROGRESS " + json.dumps(
        {"step": step, "total_steps": total, "loss": 2.0 / step, "eta_seconds": 3 - step}
    )


def result_line(namespace: str) -> str:
    return "LMFT_RESULT " + json.dumps(
        {
            "model_dir": "/tmp/lmft-output/model",
            "global_step": 3,
            "first_loss": 2.0,
            "final_loss": 0.67,
            "train_seconds": 12.5,
            "trackio_project": "lm-fine-tuning",
            "hub_repo": f"{namespace}/smol-pirate",
            "hub_revision": "a" * 40,
        }
    )


def play_success(server: HfJobsServer, job_id: str) -> None:
    time.sleep(0.3)
    server.set_stage(job_id, "RUNNING")
    for step in (1, 2, 3):
        server.append_log(job_id, f"{{'loss': {2.0 / step}}}", progress(step))
        time.sleep(0.2)
    server.append_log(job_id, result_line(server.namespace))
    deadline = time.monotonic() + 30  # stay RUNNING until the monitor has sampled the metrics
    while time.monotonic() < deadline and not any(
        p.endswith(f"{job_id}/metrics") for _, p, _ in list(server.requests)
    ):
        time.sleep(0.1)
    server.set_stage(job_id, "COMPLETED")


def play_error(server: HfJobsServer, job_id: str) -> None:
    time.sleep(0.2)
    server.set_stage(job_id, "RUNNING")
    server.append_log(
        job_id,
        progress(1),
        "Traceback (most recent call last):",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    )
    time.sleep(0.3)
    server.set_stage(job_id, "ERROR", "Job failed with exit code: 1")


@flow(name="train-on-hf", on_cancellation=[cancel_job_of_flow_run])
def train_on_hf(
    request: FineTuneRequest, key: str, settings: MonitorSettings = FAST
) -> TrainingResult:
    handle = submit_training(
        request,
        MODEL,
        idempotency_key=key,
        labels={"flow_run_id": str(current_flow_run.id)},
        estimate=ESTIMATE,
    )
    return monitor_training(handle, ESTIMATE, settings)


@flow(name="submit-on-hf")
def submit_on_hf(request: FineTuneRequest, key: str) -> str:
    handle = submit_training(
        request,
        MODEL,
        idempotency_key=key,
        labels={"flow_run_id": str(current_flow_run.id)},
        estimate=ESTIMATE,
    )
    return handle.job_id


def scripted_job(hf_server, *, labels: dict[str, str]):
    """A plain job created with the real client, whose life the test then plays."""
    credentials = HuggingFaceCredentials(
        token=SecretStr(hf_server.token), namespace=hf_server.namespace, endpoint=hf_server.url
    )
    job = credentials.api().run_job(
        image="python:3.12", command=["python"], namespace=hf_server.namespace, labels=labels
    )
    return credentials, job


async def _logs_and_artifacts(flow_run_id) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    await APILogHandler.aflush()  # logs are shipped in batches: send what is still queued
    async with get_client() as client:
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return "\n".join(log.message for log in logs) + "\n".join(
        json.dumps(a.model_dump(mode="json"), default=str) for a in artifacts
    )


def test_happy_path_submits_once_follows_and_records_the_hub_repo(prefect_server, hf_server):
    hf_server.autoplay = play_success
    state = train_on_hf(hf_request(), key="happy-1", return_state=True)
    result = state.result()

    assert (
        result.hub_repo == f"{hf_server.namespace}/smol-pirate" and result.hub_revision == "a" * 40
    )
    assert result.global_step == 3 and result.model_dir is None
    [job] = hf_server.jobs.values()
    spec = job.spec
    assert spec["flavor"] == "a10g-small" and spec["timeoutSeconds"] == 7200
    assert spec["secrets"] == {"HF_TOKEN": hf_server.token}
    assert hf_server.token not in json.dumps(spec["environment"])
    assert spec["labels"]["idempotency_key"] == "happy-1"
    assert spec["labels"]["flow_run_id"] == str(state.state_details.flow_run_id)
    assert (
        spec["labels"]["estimated_cost_cents"] == "125"
        and spec["labels"]["project"] == "lm-fine-tuning"
    )
    command = spec["command"]
    assert command[:2] == ["uv", "run"] and "/data/train.py" in command
    assert command[command.index("--push_to_hub_repo") + 1] == f"{hf_server.namespace}/smol-pirate"
    assert [d for d in job_dependencies() if d.startswith("trl==")] and set(
        job_dependencies()
    ) <= set(command)
    # run_uv_job shipped the script through the namespace's jobs-artifacts bucket (Xet upload)
    [volume] = spec["volumes"]
    assert volume["mountPath"] == "/data"
    assert f"{volume['path']}/train.py" in hf_server.buckets[volume["source"]]

    import asyncio

    text = asyncio.run(_logs_and_artifacts(state.state_details.flow_run_id))
    assert "step 3/3" in text and "running -> completed" in text and "GPU 87.0% util" in text
    assert f"/jobs/{hf_server.namespace}/{job.id}" in text
    assert hf_server.token not in text


def test_error_fails_the_flow_with_the_last_log_lines(prefect_server, hf_server):
    hf_server.autoplay = play_error
    state = train_on_hf(hf_request(), key="error-1", return_state=True)

    assert state.is_failed()
    with pytest.raises(Exception) as failure:
        state.result()
    message = str(failure.value)
    assert "ended error" in message and "Job failed with exit code: 1" in message
    assert "CUDA out of memory" in message
    assert hf_server.token not in message + repr(failure.value)
    import asyncio

    assert hf_server.token not in asyncio.run(_logs_and_artifacts(state.state_details.flow_run_id))


def test_a_storm_of_429_and_500_still_makes_exactly_one_job(prefect_server, hf_server):
    hf_server.autoplay = play_success
    hf_server.fail_next("GET", r"^/api/jobs/[^/]+$", 429, times=2, retry_after=0.2)
    # the Hub creates the job but the answer is lost, twice
    hf_server.fail_next("POST", r"^/api/jobs/[^/]+$", 500, times=2, after_commit=True)
    hf_server.fail_next("GET", r"^/api/jobs/[^/]+/[^/]+$", 503, times=3, retry_after=0.1)
    hf_server.fail_next("GET", r"/logs$", 500, times=2)

    result = train_on_hf(hf_request(), key="storm-1")

    assert len(hf_server.jobs) == 1
    assert result.hub_repo == f"{hf_server.namespace}/smol-pirate"
    statuses = [
        status for method, path, status in hf_server.requests if path.startswith("/api/jobs")
    ]
    assert 429 in statuses and 500 in statuses and 503 in statuses


def test_a_new_run_with_the_same_key_attaches_instead_of_submitting(
    prefect_server, scripted_hf_server
):
    hf_server = scripted_hf_server
    first = submit_on_hf(hf_request(), key="same-key")
    second = submit_on_hf(hf_request(), key="same-key")
    assert first == second and len(hf_server.jobs) == 1
    # a failed attempt does not block a deliberate new one
    hf_server.set_stage(first, "ERROR", "boom")
    third = submit_on_hf(hf_request(), key="same-key")
    assert third != first and len(hf_server.jobs) == 2


def test_cancelling_the_flow_run_cancels_its_job_with_block_credentials(
    prefect_server, scripted_hf_server, monkeypatch
):
    hf_server = scripted_hf_server
    monkeypatch.delenv("LMFT_HF_NAMESPACE")
    monkeypatch.setenv("LMFT_HF_CREDENTIALS_BLOCK", "hf-cancel-test")
    HuggingFaceCredentials(
        token=SecretStr(hf_server.token), namespace=hf_server.namespace, endpoint=hf_server.url
    ).save("hf-cancel-test", overwrite=True)
    _load_block.cache_clear()

    state = submit_on_hf(hf_request(), key="cancel-1", return_state=True)
    job_id = state.result()
    hf_server.set_stage(job_id, "RUNNING")

    import asyncio

    async def read_run():
        async with get_client() as client:
            [run] = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
                )
            )
            return run

    # what Prefect calls when the run is cancelled (the flow declares it as on_cancellation)
    assert cancel_job_of_flow_run in train_on_hf.on_cancellation_hooks
    cancel_job_of_flow_run(train_on_hf, asyncio.run(read_run()), Cancelled())
    assert hf_server.jobs[job_id].stage == "CANCELED"


def test_a_dropped_log_stream_resumes_without_losing_or_repeating_lines(scripted_hf_server):
    hf_server = scripted_hf_server
    credentials, job = scripted_job(hf_server, labels={"k": "v"})
    [handle] = find_hf_jobs(credentials, {"k": "v"})
    hf_server.set_stage(job.id, "RUNNING")
    hf_server.append_log(job.id, *[f"line {i}" for i in range(10)])
    hf_server.drop_log_stream(job.id, after_events=4)
    # the library gives up on its stage check (500s) and our reader reconnects
    hf_server.fail_next("GET", rf"^/api/jobs/[^/]+/{job.id}$", 500, times=1)

    def finish():
        time.sleep(0.5)
        hf_server.append_log(job.id, "line 10")
        hf_server.set_stage(job.id, "COMPLETED")

    threading.Thread(target=finish).start()
    lines = list(hf_job_logs(credentials, handle, follow=True))
    assert lines == [f"line {i}" for i in range(11)]


def test_labels_are_valid_job_labels():
    assert label_value("flow-run-3f2b") == "flow-run-3f2b"
    odd = label_value("nightly retrain: 2026/11/29")
    assert (
        odd == label_value("nightly retrain: 2026/11/29")
        and odd.startswith("h-")
        and len(odd) <= 100
    )


def test_credentials_block_keeps_the_token_secret():
    credentials = HuggingFaceCredentials(token=SecretStr("hf_very_secret"), namespace="me")
    assert (
        "hf_very_secret"
        not in repr(credentials) + str(credentials.model_dump()) + credentials.model_dump_json()
    )


def test_killing_the_monitoring_process_and_starting_again_reattaches(
    prefect_server, scripted_hf_server, tmp_path
):
    hf_server = scripted_hf_server
    import os
    import signal
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    env.pop("HF_HUB_OFFLINE", None)  # the session sets it; the child talks to the local Hub
    command = [sys.executable, "-m", "tests.tasks.jobs.hf_resume_child", "resume-1"]

    def log_streams() -> int:
        return sum(1 for method, path, _ in hf_server.requests if path.endswith("/logs"))

    def wait_for(condition, timeout=120.0):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.1)

    first = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        [job_id] = hf_server.wait_for_jobs(1, timeout=120)
    except TimeoutError:
        os.killpg(first.pid, signal.SIGKILL)
        raise AssertionError(first.communicate()[0].decode()[-3000:]) from None
    hf_server.set_stage(job_id, "RUNNING")
    hf_server.append_log(job_id, progress(1))
    wait_for(lambda: log_streams() >= 1)
    os.killpg(
        first.pid, signal.SIGKILL
    )  # the worker dies mid-run (e.g. the runner hit its time limit)
    first.wait()

    second = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    wait_for(lambda: log_streams() >= 2)
    hf_server.append_log(job_id, progress(2), progress(3), result_line(hf_server.namespace))
    hf_server.set_stage(job_id, "COMPLETED")
    output = second.communicate(timeout=120)[0].decode()

    assert second.returncode == 0, output
    assert f"RESULT {hf_server.namespace}/smol-pirate" in output
    assert f"attached to existing Hugging Face job {job_id}" in output
    assert list(hf_server.jobs) == [job_id]
    assert (
        sum(
            1
            for method, path, _ in hf_server.requests
            if method == "POST" and path == f"/api/jobs/{hf_server.namespace}"
        )
        == 1
    )
    assert hf_server.token not in output


class _Notes:
    def __init__(self) -> None:
        self.stages, self.progress, self.metrics, self.stalls = [], [], [], []

    def on_stage(self, status, previous) -> None:
        self.stages.append(status.state.value)

    def on_progress(self, update) -> None:
        self.progress.append(update.step)

    def on_metrics(self, metrics, cost_usd) -> None:
        self.metrics.append((metrics, cost_usd))

    def on_stalled(self, quiet_seconds) -> None:
        self.stalls.append(quiet_seconds)


def test_monitor_reports_stages_metrics_cost_and_a_stall(scripted_hf_server):
    hf_server = scripted_hf_server
    from tasks.jobs.monitor import follow_job

    credentials, job = scripted_job(hf_server, labels={"k": "stall"})
    [handle] = find_hf_jobs(credentials, {"k": "stall"})

    def play():
        time.sleep(0.3)
        hf_server.set_stage(job.id, "RUNNING")
        hf_server.append_log(job.id, progress(1))
        time.sleep(1.5)  # silence: longer than stall_seconds
        hf_server.append_log(job.id, progress(2), progress(3), result_line(hf_server.namespace))
        hf_server.set_stage(job.id, "COMPLETED")

    threading.Thread(target=play).start()
    notes = _Notes()
    settings = MonitorSettings(
        poll_seconds=0.1, metrics_seconds=0.3, stall_seconds=0.8, log_grace_seconds=5
    )
    outcome = follow_job(handle, notes, settings, price_per_hour=3.6)

    assert notes.stages == ["scheduling", "running", "completed"]
    assert notes.progress == [1, 2, 3] and len(notes.stalls) == 1
    metrics, cost = notes.metrics[0]
    assert (
        metrics.gpu_count == 1
        and metrics.gpu_utilization_pct == 87
        and metrics.gpu_memory_total_gb == 24.0
    )
    assert cost is not None and outcome.cost_usd is not None and outcome.cost_usd >= cost
    assert (
        outcome.status.state.value == "completed"
        and outcome.result["hub_repo"] == f"{hf_server.namespace}/smol-pirate"
    )


def test_local_folders_are_refused_before_anything_is_submitted(tmp_path, tiny_llama):
    from tasks.jobs.training import check_shippable

    with pytest.raises(ValueError, match="base_model: .* local folder"):
        check_shippable(hf_request(), str(tiny_llama))
    (tmp_path / "part.jsonl").write_text('{"text": "hi"}\n')
    with pytest.raises(ValueError, match="dataset.path: .* local folder"):
        check_shippable(hf_request(dataset=DatasetSource(path=str(tmp_path))), MODEL)


def test_the_job_installs_recorded_public_releases_and_the_double_refuses_a_local_build(
    scripted_hf_server,
):
    from packaging.requirements import Requirement

    from tasks.jobs.hf import script_dependencies
    from tests.doubles.job_runner import JobCommandError, check_requirement

    hf_server = scripted_hf_server
    pins = job_dependencies()
    # one pin per PEP 723 dependency of train.py, inside its declared range, public on PyPI
    assert {Requirement(p).name for p in pins} == {r.name for r in script_dependencies()}
    assert all("+" not in version for version in JOB_REQUIREMENTS.values())
    for pin in pins:
        check_requirement(pin)
    with pytest.raises(JobCommandError, match=r"local version labels such as `\+cpu`"):
        check_requirement("torch==2.13.0+cpu")
    # a job that asks for a CPU build never starts: uv's error is its log, ERROR its stage
    hf_server.run_jobs = True
    api = HuggingFaceCredentials(
        token=SecretStr(hf_server.token), namespace=hf_server.namespace, endpoint=hf_server.url
    ).api()
    job = api.run_uv_job(
        "print('never')", dependencies=["torch==2.13.0+cpu"], namespace=hf_server.namespace
    )
    deadline = time.monotonic() + 30
    while hf_server.jobs[job.id].stage not in ("ERROR", "COMPLETED"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    record = hf_server.jobs[job.id]
    assert record.stage == "ERROR" and record.pid is None
    assert any("No solution found" in line for _, line in record.logs)


def test_the_monitor_stops_with_a_clear_error_when_the_status_cannot_be_read(
    scripted_hf_server,
):
    from schemas.jobs import JobUnreachable
    from tasks.jobs.monitor import follow_job

    hf_server = scripted_hf_server
    credentials, job = scripted_job(hf_server, labels={"k": "lost"})
    [handle] = find_hf_jobs(credentials, {"k": "lost"})
    hf_server.set_stage(job.id, "RUNNING")
    # the token was revoked: every stage check answers 401, for good
    hf_server.fail_next("GET", rf"^/api/jobs/[^/]+/{job.id}$", 401, times=1000)
    settings = MonitorSettings(
        poll_seconds=0.05, metrics_seconds=60, log_grace_seconds=1, max_status_failures=4
    )
    started = time.monotonic()
    with pytest.raises(JobUnreachable) as stopped:
        follow_job(handle, _Notes(), settings)
    assert time.monotonic() - started < 30
    message = str(stopped.value)
    assert job.id in message and "4 times in a row" in message and "HTTP 401" in message
    assert "lmft cancel" in message and hf_server.token not in message
    statuses = [s for m, p, s in hf_server.requests if p.endswith(f"/{job.id}") and m == "GET"]
    assert statuses.count(401) == 4


def test_a_job_cancelled_before_it_ran_costs_nothing(prefect_server, scripted_hf_server, tmp_path):
    from types import SimpleNamespace

    from prefect.states import Cancelled as CancelledState

    from blocks.budget import BudgetPolicy
    from tasks.costs.budget import release_budget_of_flow_run
    from tasks.costs.ledger import Ledger, ReservationStatus

    hf_server = scripted_hf_server
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    BudgetPolicy(
        monthly_limit_usd=100, approval_threshold_usd=50, per_job_max_usd=50, ledger_url=url
    ).save("default", overwrite=True)
    try:
        flow_run_id = "3f2b6c1e-0000-4000-8000-000000000001"
        ledger = Ledger(url)
        reservation = ledger.reserve(
            run_key="never-ran",
            backend="hf-jobs",
            hardware=ESTIMATE.hardware,
            price_per_hour=ESTIMATE.price_per_hour,
            expected_usd=ESTIMATE.expected_usd,
            high_usd=ESTIMATE.high_usd,
            monthly_limit_usd=100,
            per_job_max_usd=50,
            needs_approval=False,
            flow_run_id=flow_run_id,
        )
        _, job = scripted_job(hf_server, labels={"flow_run_id": flow_run_id})
        ledger.mark_started(reservation.id, job.created_at)
        time.sleep(1.2)  # it waited for a machine …
        hf_server.set_stage(job.id, "CANCELED", "Canceled by user")  # … and was cancelled there
        release_budget_of_flow_run(
            None, SimpleNamespace(id=flow_run_id), CancelledState(message="by test")
        )
        [entry] = ledger.entries(flow_run_id=flow_run_id)
        assert entry.status is ReservationStatus.RELEASED and entry.actual_usd == 0
    finally:
        BudgetPolicy.delete("default")


def test_the_monitor_task_times_out_after_the_jobs_own_timeout_plus_a_margin():
    from tasks.jobs.training import MONITOR_MARGIN_SECONDS, monitor_timeout

    assert monitor_timeout(ESTIMATE) == ESTIMATE.timeout_seconds + MONITOR_MARGIN_SECONDS
    assert monitor_timeout(ESTIMATE.model_copy(update={"timeout_seconds": None})) is None
    assert monitor_timeout(None) is None


def test_a_qlora_job_installs_bitsandbytes_and_asks_the_script_for_a_4bit_base(tmp_path):
    from schemas.request import FineTuneRequest
    from tasks.jobs.hf import QLORA_REQUIREMENTS
    from tasks.jobs.training import training_script_args

    assert not any(p.startswith("bitsandbytes") for p in job_dependencies())
    assert f"bitsandbytes=={QLORA_REQUIREMENTS['bitsandbytes']}" in job_dependencies(quantized=True)
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "hello"}\n')
    request = FineTuneRequest.model_validate(
        {"dataset": {"path": str(data)}, "backend": "hf-jobs", "lora": {"quantize": "4bit"}}
    )
    args = training_script_args(request, "org/model", run_name="r")
    assert args[args.index("--quantize") + 1] == "4bit"
    assert args[args.index("--loss_on") + 1] == "answers"
    assert args[args.index("--packing") + 1] == "auto"
