"""The local backend runs the real training script, streams its log, cancels it, reports errors."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from schemas.request import Backend
from tasks.jobs import JobState, parse_progress_line, parse_result_line
from tasks.jobs.backends import cancel_job, find_jobs, job_logs, job_status, tail_job_logs
from tasks.jobs.local import job_dir, submit_local_job


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "chat.jsonl"
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


def script_args(model: Path, data: Path, *, max_steps: int, method: str = "sft") -> list[str]:
    return [
        "--model_name_or_path",
        str(model),
        "--dataset_path",
        str(data),
        "--method",
        method,
        "--max_steps",
        str(max_steps),
        "--max_length",
        "64",
        "--per_device_train_batch_size",
        "2",
    ]


def wait_for(predicate, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError("condition not reached")


def test_runs_to_completion_and_streams_progress(tiny_llama, chat_file):
    key = uuid.uuid4().hex
    handle = submit_local_job(
        script_args=script_args(tiny_llama, chat_file, max_steps=3), idempotency_key=key
    )
    assert job_status(handle).state in (JobState.RUNNING, JobState.COMPLETED)

    lines = list(job_logs(handle, follow=True))  # returns only once the job has ended

    updates = [p for line in lines if (p := parse_progress_line(line))]
    assert [p.step for p in updates if not p.is_evaluation] == [1, 2, 3]
    # The held-out rows are evaluated on the base model, at each checkpoint (every 25 %: each of the 3 steps) and the end.
    assert [p.step for p in updates if p.is_evaluation] == [0, 1, 2, 3]
    result = next(r for line in lines if (r := parse_result_line(line)))
    assert result["global_step"] == 3
    assert Path(result["model_dir"], "config.json").exists()
    status = job_status(handle)
    assert status.state is JobState.COMPLETED and status.exit_code == 0


def test_same_idempotency_key_returns_the_existing_job(tiny_llama, chat_file):
    key = uuid.uuid4().hex
    first = submit_local_job(
        script_args=script_args(tiny_llama, chat_file, max_steps=1), idempotency_key=key
    )
    second = submit_local_job(
        script_args=script_args(tiny_llama, chat_file, max_steps=1), idempotency_key=key
    )
    assert second.job_id == first.job_id
    assert [h.job_id for h in find_jobs(Backend.LOCAL, {"idempotency_key": key})] == [first.job_id]
    list(job_logs(first, follow=True))


def test_cancel_kills_the_whole_process_group(tiny_llama, chat_file):
    handle = submit_local_job(
        script_args=script_args(tiny_llama, chat_file, max_steps=100_000),
        idempotency_key=uuid.uuid4().hex,
    )
    # Wait until training really runs, then cancel.
    wait_for(lambda: any(parse_progress_line(line) for line in job_logs(handle)))
    pid = json.loads((job_dir(handle.job_id) / "job.json").read_text())["pid"]

    status = cancel_job(handle)

    assert status.state is JobState.CANCELLED
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert cancel_job(handle).state is JobState.CANCELLED  # cancelling again is harmless


def test_error_reports_exit_code_and_last_lines(tiny_llama, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "no messages column here"}) + "\n")
    handle = submit_local_job(
        script_args=script_args(tiny_llama, bad, max_steps=1), idempotency_key=uuid.uuid4().hex
    )
    list(job_logs(handle, follow=True))

    status = job_status(handle)

    assert status.state is JobState.ERROR and status.exit_code not in (0, None)
    assert any("Traceback" in line or "Error" in line for line in tail_job_logs(handle, 30))


def test_status_survives_the_worker_that_started_the_job(tiny_llama, chat_file, monkeypatch):
    """Another process (no Popen object, no exit thread) reads the state from the job folder."""
    from tasks.jobs import local

    handle = submit_local_job(
        script_args=script_args(tiny_llama, chat_file, max_steps=1),
        idempotency_key=uuid.uuid4().hex,
    )
    list(job_logs(handle, follow=True))
    (
        job_dir(handle.job_id) / "exit_code"
    ).unlink()  # as if the starting worker died before recording it
    monkeypatch.setattr(local, "_children", {})

    assert job_status(handle).state is JobState.COMPLETED
