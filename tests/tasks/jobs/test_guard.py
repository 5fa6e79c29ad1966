"""A run killed with `kill -9` does not leave its training, its state or its budget hold behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from schemas.request import Backend
from tasks.jobs import parse_progress_line
from tasks.jobs.backends import find_jobs, job_logs
from tasks.jobs.guard import process_start_ticks
from tasks.jobs.local import job_dir

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def chat_file(tmp_path) -> Path:
    path = tmp_path / "chat.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} + {i}?"},
                {"role": "assistant", "content": f"Arr, {2 * i}!"},
            ]
        }
        for i in range(12)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def wait_for(predicate, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process exited first:\n{_tail(process)}")
        time.sleep(0.2)
    raise AssertionError(f"not reached in {timeout} s: {what}")


def _tail(process: subprocess.Popen) -> str:
    process.log.flush()
    return Path(process.log.name).read_text()[-3000:]


def lmft(*args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    from prefect.settings import PREFECT_API_URL

    out = open(log, "w")  # noqa: SIM115 - kept open for the process's life
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    process.log = out
    return process


def flow_run_state(flow_run_id: str):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(uuid.UUID(flow_run_id)).state


def test_kill_9_of_lmft_run_ends_training_and_the_run_within_seconds(
    prefect_server, tiny_llama, chat_file
):
    name = f"killed-{uuid.uuid4().hex[:6]}"
    run = lmft(
        "run",
        "--dataset",
        str(chat_file),
        "--model",
        str(tiny_llama),
        "--max-steps",
        "100000",
        "--output-name",
        name,
        log=chat_file.with_suffix(".log"),
    )
    try:
        handle = wait_for(
            lambda: next(
                (
                    h
                    for h in find_jobs(Backend.LOCAL, {})
                    if h.labels.get("flow_run_id")
                    and json.loads((job_dir(h.job_id) / "job.json").read_text())["command"][-1]
                    != ""
                    and _owned_by(h, run.pid)
                ),
                None,
            ),
            240,
            "the training job started",
            run,
        )
        wait_for(
            lambda: any(parse_progress_line(line) for line in job_logs(handle)),
            240,
            "training steps",
        )
        training = json.loads((job_dir(handle.job_id) / "job.json").read_text())["pid"]

        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        killed_at = time.monotonic()

        wait_for(lambda: process_start_ticks(training) is None, 10, "the training process ended")
        state = wait_for(
            lambda: (s := flow_run_state(handle.labels["flow_run_id"])) and s.is_final() and s,
            20,
            "the flow run reached a final state",
        )
        assert state.is_crashed() and f"pid {run.pid}" in state.message
        assert time.monotonic() - killed_at < 30
    finally:
        if run.poll() is None:
            run.kill()


def _owned_by(handle, pid: int) -> bool:
    """The job was started by process `pid` (its launcher was handed the owner's pid)."""
    command = json.loads((job_dir(handle.job_id) / "job.json").read_text())["command"]
    return command[3] == str(pid)


def test_kill_9_of_a_paid_run_cancels_its_hugging_face_job_and_releases_its_hold(
    prefect_server, hf_server, embedded_base_model, chat_file, tmp_path
):
    from blocks.budget import BudgetPolicy
    from tasks.costs.ledger import Ledger

    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    BudgetPolicy(
        monthly_limit_usd=100, approval_threshold_usd=100, per_job_max_usd=100, ledger_url=url
    ).save("default", overwrite=True)
    ledger = Ledger(url)
    run = lmft(
        "run", "--dataset", str(chat_file), "--backend", "hf-jobs", "--max-steps", "50",
        log=tmp_path / "lmft.log",
    )  # fmt: skip
    try:
        [job_id] = wait_for(lambda: list(hf_server.jobs), 240, "the Hugging Face job", run)
        hf_server.set_stage(job_id, "RUNNING")
        wait_for(
            lambda: ledger.entries() and ledger.entries()[0].job_started_at, 60, "job start", run
        )
        [held] = ledger.entries()
        assert held.is_open and held.reserved_usd > 0

        os.kill(run.pid, signal.SIGKILL)
        run.wait()

        wait_for(lambda: hf_server.jobs[job_id].stage == "CANCELED", 20, "the job cancelled")
        wait_for(lambda: not ledger.entries()[0].is_open, 20, "the hold released")
        [entry] = ledger.entries()
        assert entry.reserved_usd == 0 and entry.closed_by == "flow run hook"
        assert flow_run_state(held.flow_run_id).is_crashed()
        assert ledger.totals(limit_usd=100).reserved_usd == 0
    finally:
        if run.poll() is None:
            run.kill()
