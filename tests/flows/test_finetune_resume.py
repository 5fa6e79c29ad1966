"""The `finetune` flow resumes a killed local job from its checkpoint and refuses a bad eval
dataset before any job starts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from mcp_adapter.status import job_status
from schemas.request import FineTuneRequest
from tasks.jobs.backends import find_jobs
from tasks.paths import jobs_dir
from tasks.validation import DatasetInvalid


def chat_rows(n: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} + {i}?"},
                {"role": "assistant", "content": f"Arr, {2 * i}!"},
            ]
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def request_for(model: Path, data: Path, **fields) -> FineTuneRequest:
    return FineTuneRequest.model_validate(
        {
            "base_model": str(model),
            "dataset": {"path": str(data)},
            "gguf": None,
            "deploy": None,
            "hyperparameters": {
                "max_steps": 8,
                "batch_size": 2,
                "max_length": 32,
                "learning_rate": 0.01,
                "loss_on": "all",  # the prompts fill 32 tokens; these tests are about resuming
            },
            **fields,
        }
    )


def kill_first_job_after_checkpoint(before: set[str], killed: list[str]) -> None:
    """SIGKILL the first new local job once it has a complete checkpoint (a lost machine)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for directory in jobs_dir().iterdir():
            if directory.name in before or not (directory / "job.json").exists():
                continue
            states = list(
                (directory / "output" / "checkpoints").glob("checkpoint-*/trainer_state.json")
            )
            if states:
                pid = json.loads((directory / "job.json").read_text())["pid"]
                os.killpg(pid, signal.SIGKILL)
                killed.append(directory.name)
                return
        time.sleep(0.1)


def test_a_killed_local_job_is_resumed_from_its_checkpoint(prefect_server, tiny_llama, tmp_path):
    from flows.finetune import finetune

    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(24))
    request = request_for(tiny_llama, data, checkpoints={"save_steps": 2})
    before, killed = {p.name for p in jobs_dir().iterdir()}, []
    killer = threading.Thread(target=kill_first_job_after_checkpoint, args=(before, killed))
    killer.start()

    state = finetune(request, return_state=True)
    killer.join()

    assert state.is_completed(), state.message
    summary = state.result()
    assert len(killed) == 1 and summary.jobs[0] == killed[0] and len(summary.jobs) == 2
    assert summary.steps == 8  # the second job finished the run
    log = (jobs_dir() / summary.jobs[1] / "train.log").read_text()
    first = next(
        json.loads(line[14:]) for line in log.splitlines() if line.startswith("LMFT_PROGRESS ")
    )
    assert first["resumed_from_step"] >= 2 and first["step"] == first["resumed_from_step"] + 1
    # One flow run, two jobs, both labelled with it.
    run_jobs = find_jobs(request.backend, {"flow_run_id": str(state.state_details.flow_run_id)})
    assert sorted(h.job_id for h in run_jobs) == sorted(summary.jobs)
    assert summary.eval_loss is not None and summary.base_eval_loss is not None
    # get_job_status reports the evaluations from the run's status (the saved model's figures).
    progress = asyncio.run(job_status(state.state_details.flow_run_id)).progress
    assert progress.eval_loss is not None and progress.eval_step == summary.steps
    assert (progress.base_eval_loss, progress.best_eval_loss) == (
        summary.base_eval_loss,
        summary.eval_loss,
    )
    assert progress.best_step == summary.best_step


def test_a_bad_eval_dataset_is_refused_with_its_row_before_any_job(
    prefect_server, tiny_llama, tmp_path
):
    from flows.finetune import finetune

    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(24))
    rows = chat_rows(4)
    rows[2]["messages"][1]["role"] = "user"  # row 3: two user turns in a row
    held_out = write_jsonl(tmp_path / "eval.jsonl", rows)
    request = request_for(tiny_llama, data, evaluation={"eval_dataset": {"path": str(held_out)}})
    before = sorted(jobs_dir().iterdir())

    state = finetune(request, return_state=True)

    assert state.is_failed()
    with pytest.raises(DatasetInvalid, match=r"(?s)evaluation.eval_dataset '.*eval.jsonl'.*row 3"):
        state.result()
    assert sorted(jobs_dir().iterdir()) == before


def test_resume_from_continues_an_earlier_run_that_was_not_resumed(
    prefect_server, tiny_llama, tmp_path
):
    from flows.finetune import finetune

    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(24))
    settings = {"save_steps": 2, "max_resumes": 0}
    before, killed = {p.name for p in jobs_dir().iterdir()}, []
    killer = threading.Thread(target=kill_first_job_after_checkpoint, args=(before, killed))
    killer.start()
    first = finetune(request_for(tiny_llama, data, checkpoints=settings), return_state=True)
    killer.join()
    assert first.is_failed() and len(killed) == 1  # max_resumes 0: the flow gave up

    run_id = str(first.state_details.flow_run_id)
    second = finetune(
        request_for(tiny_llama, data, checkpoints=settings, resume_from=run_id), return_state=True
    )

    assert second.is_completed(), second.message
    summary = second.result()
    assert summary.steps == 8
    command = json.loads((jobs_dir() / summary.jobs[-1] / "job.json").read_text())["command"]
    flag = command.index("--resume_from_checkpoint")
    assert f"{killed[0]}/output/checkpoints/checkpoint-" in command[flag + 1]
