"""training/train.py: eval loss, checkpoints, resume, early stopping and the loss watchdog, on a tiny llama."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training import TRAIN_SCRIPT
from training import train as train_script

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def chat_rows(answer: str, n: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} + {i}?"},
                {"role": "assistant", "content": f"{answer} {2 * i}!"},
            ]
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def learnable(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "chat.jsonl", chat_rows("Arr,", 24))


def arguments(model: Path, data: Path, output: Path, **overrides) -> list[str]:
    values = {
        "model_name_or_path": model,
        "dataset_path": data,
        "output_dir": output,
        "max_steps": 8,
        "max_length": 32,
        # The prompts (SmolLM2's default system prompt and the question) fill 32 tokens: these
        # tests are about checkpoints and evaluation, so they train on every token.
        "loss_on": "all",
        "per_device_train_batch_size": 2,
        "learning_rate": 0.01,
        "eval_ratio": 0.1,
        **overrides,
    }
    out: list[str] = []
    for key, value in values.items():
        out += [f"--{key}", str(value)]
    return out


def run_in_process(argv: list[str]) -> dict:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(train_script.ScriptArguments).parse_args_into_dataclasses(argv)
    return train_script.main(args)


def records(text: str, prefix: str) -> list[dict]:
    return [
        json.loads(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)
    ]


def test_eval_loss_is_reported_before_during_and_after_and_goes_down(
    tiny_llama, learnable, tmp_path, capsys
):
    result = run_in_process(arguments(tiny_llama, learnable, tmp_path / "out", save_steps=4))

    evals = [p for p in records(capsys.readouterr().out, "LMFT_PROGRESS ") if "eval_loss" in p]
    assert [p["step"] for p in evals] == [0, 4, 8]  # the base model, every checkpoint, the end
    assert all(p["base_eval_loss"] == evals[0]["eval_loss"] for p in evals)
    assert result["base_eval_loss"] == evals[0]["eval_loss"]
    assert result["eval_loss"] < result["base_eval_loss"]  # it learnt something it did not see
    assert result["best_step"] == 8 and result["eval_loss"] == evals[-1]["eval_loss"]
    assert [e["step"] for e in result["eval_history"]] == [0, 4, 8]


def test_killed_training_resumes_from_its_last_checkpoint(tiny_llama, learnable, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    args = arguments(tiny_llama, learnable, tmp_path / "out", max_steps=10, save_steps=3)
    first = subprocess.Popen(
        [sys.executable, "-u", str(TRAIN_SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=ENV,
        text=True,
    )
    state = tmp_path / "out" / "checkpoints" / "checkpoint-3" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not state.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    first.kill()  # SIGKILL: nothing runs after it, as when a machine is lost
    killed_log = first.communicate()[0]
    killed_at = max(p["step"] for p in records(killed_log, "LMFT_PROGRESS "))
    assert killed_at < 10, "the job ended before it could be killed"
    saved = max(
        int(p.name.split("-")[1]) for p in (tmp_path / "out" / "checkpoints").glob("checkpoint-*")
    )

    resumed = run_in_process(
        args + ["--resume_from_checkpoint", str(tmp_path / "out" / "checkpoints")]
    )
    lines = records(capsys.readouterr().out, "LMFT_PROGRESS ")
    assert lines[0]["step"] == saved + 1 and lines[0]["resumed_from_step"] == saved
    assert resumed["global_step"] == 10 and resumed["resumed_from_step"] == saved
    assert resumed["base_eval_loss"] is not None  # carried over from the first job's history

    reference = run_in_process(
        arguments(tiny_llama, learnable, tmp_path / "ref", max_steps=10, save_steps=3)
    )
    ref_lines = records(capsys.readouterr().out, "LMFT_PROGRESS ")
    ref_lr = {p["step"]: p["learning_rate"] for p in ref_lines if "learning_rate" in p}
    # The same learning-rate schedule and data order continue where the checkpoint left off.
    for line in (p for p in lines if "learning_rate" in p):
        assert line["learning_rate"] == pytest.approx(ref_lr[line["step"]])
    ours = load_file(Path(resumed["adapter_dir"]) / "adapter_model.safetensors")
    theirs = load_file(Path(reference["adapter_dir"]) / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5)


def test_sigterm_saves_a_checkpoint_and_exits_143(tiny_llama, learnable, tmp_path):
    args = arguments(tiny_llama, learnable, tmp_path / "out", max_steps=200, eval_ratio=0)
    job = subprocess.Popen(
        [sys.executable, "-u", str(TRAIN_SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=ENV,
        text=True,
    )
    for line in job.stdout:
        if line.startswith("LMFT_PROGRESS ") and json.loads(line[14:])["step"] >= 2:
            job.send_signal(signal.SIGTERM)
            break
    log = job.stdout.read()
    assert job.wait(timeout=120) == 143
    stopped = records(log, "LMFT_STOPPED ")[0]
    assert stopped["resumable"] and "SIGTERM" in stopped["reason"]
    assert (tmp_path / "out" / "checkpoints" / f"checkpoint-{stopped['step']}").is_dir()
    assert not (tmp_path / "out" / "model").exists()


def test_early_stopping_keeps_the_best_checkpoint(tiny_llama, tmp_path, capsys):
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "train.jsonl", chat_rows("Arr,", 24))
    # The held-out answers contradict the training ones: past the shared format, eval loss rises.
    held_out = write_jsonl(tmp_path / "eval.jsonl", chat_rows("Nay, never", 4))
    result = run_in_process(
        arguments(
            tiny_llama,
            data,
            tmp_path / "out",
            max_steps=60,
            learning_rate=0.05,
            eval_dataset_path=held_out,
            eval_steps=2,
            early_stopping_patience=2,
        )
    )
    assert result["stopped_early"] and result["global_step"] < 60
    assert result["best_step"] < result["global_step"]
    history = {e["step"]: e["eval_loss"] for e in result["eval_history"]}
    assert result["eval_loss"] == min(history.values()) == history[result["best_step"]]
    best = load_file(
        tmp_path
        / "out"
        / "checkpoints"
        / f"checkpoint-{result['best_step']}"
        / "adapter_model.safetensors"
    )
    saved = load_file(Path(result["adapter_dir"]) / "adapter_model.safetensors")
    assert all((best[k] == saved[k]).all() for k in best)  # the merged model is the best step's


def test_watchdog_stops_a_diverging_run(tiny_llama, learnable, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        run_in_process(
            arguments(tiny_llama, learnable, tmp_path / "out", max_steps=50, learning_rate=1e4)
        )
    assert stopped.value.code == train_script.EXIT_WATCHDOG
    record = records(capsys.readouterr().out, "LMFT_STOPPED ")[0]
    assert record["reason"].startswith("watchdog:") and not record["resumable"]
    assert record["step"] < 50
    assert not (tmp_path / "out" / "model").exists()


def test_warm_start_continues_a_finished_adapter_with_a_new_schedule(
    tiny_llama, learnable, tmp_path, capsys
):
    first = run_in_process(arguments(tiny_llama, learnable, tmp_path / "first", max_steps=4))
    capsys.readouterr()
    checkpoint = tmp_path / "first" / "checkpoints" / "checkpoint-4"

    second = run_in_process(
        arguments(tiny_llama, learnable, tmp_path / "second", max_steps=4)
        + ["--warm_start_from", str(checkpoint)]
    )

    lines = records(capsys.readouterr().out, "LMFT_PROGRESS ")
    assert lines[0]["step"] == 0 and "resumed_from_step" not in lines[0]  # a new schedule
    # It starts from the trained adapter: the "base" it evaluates first is the first run's model.
    at_step_4 = {e["step"]: e["eval_loss"] for e in first["eval_history"]}[4]
    assert second["base_eval_loss"] == pytest.approx(at_step_4, rel=1e-4)
    assert second["base_eval_loss"] < first["base_eval_loss"]


@pytest.mark.parametrize(
    ("overrides", "save", "every"),
    [
        ({}, 0.25, 0.25),  # defaults: a checkpoint and an evaluation every 25 % of the run
        ({"eval_steps": 3}, 3, 3),  # evaluations set the pace: a checkpoint at each
        ({"save_steps": 6, "eval_steps": 3}, 6, 3),
        ({"save_steps": 5}, 5, 5),
    ],
)
def test_evaluation_settings_are_accepted_by_transformers(tmp_path, overrides, save, every):
    from transformers import TrainingArguments

    args = train_script.ScriptArguments(
        model_name_or_path="m", dataset_path="d", output_dir=str(tmp_path), **overrides
    )
    settings = train_script.evaluation_settings(args, evaluates=True, resuming=False)
    assert (settings["save_steps"], settings["eval_steps"]) == (save, every)
    config = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, **settings)
    assert config.load_best_model_at_end and config.metric_for_best_model == "eval_loss"
    assert config.eval_on_start and not config.logging_nan_inf_filter
