"""Where a job that ended early can resume from, and which endings are not resumed."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from schemas.jobs import TrainingFailed
from tasks.jobs.local import submit_local_job
from tasks.jobs.resume import find_resume_point
from tasks.jobs.training import monitor_training


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
        for i in range(24)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_an_absurd_learning_rate_is_stopped_by_the_watchdog_and_not_resumable(
    prefect_server, tiny_llama, chat_file
):
    args = ["--model_name_or_path", str(tiny_llama), "--dataset_path", str(chat_file)]
    args += ["--max_steps", "50", "--max_length", "32", "--per_device_train_batch_size", "2"]
    args += ["--loss_on", "all"]  # the prompts fill 32 tokens; this test is about the watchdog
    args += ["--learning_rate", "10000", "--save_steps", "2"]
    handle = submit_local_job(script_args=args, idempotency_key=uuid.uuid4().hex)

    with pytest.raises(
        TrainingFailed, match=r"ended error \(watchdog: \w+ is nan at step (\d+)\)"
    ) as failed:
        monitor_training(handle)

    assert not failed.value.resumable  # paying again for the same divergence helps nobody
    step = int(str(failed.value).split(" at step ")[1].split(")")[0])
    assert step < 50
    assert not Path(handle.output_dir, "model").exists()
    # No checkpoint of the broken weights: a resume point, if any, predates the NaN.
    point = find_resume_point(handle)
    assert point is None or point.step < step
