"""training/train.py: the loss on the answers, packing without cross-attention, QLoRA's refusal on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from schemas.request import FineTuneRequest
from tasks.preflight import request_problems
from training import TRAIN_SCRIPT
from training import train as train_script

SYSTEM = "You are Captain Saltbeard."


def conversation(i: int, *, weight_first: int | None = None) -> dict:
    first = {"role": "assistant", "content": f"Arr, {2 * i}!"}
    if weight_first is not None:
        first["weight"] = weight_first
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"What is {i} + {i}?"},
            first,
            {"role": "user", "content": "And twice that?"},
            {"role": "assistant", "content": f"Yo ho, {4 * i}!"},
        ]
    }


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def setup_for(model: Path, data: Path, output: Path, **overrides) -> train_script.TrainingSetup:
    from transformers import HfArgumentParser

    values = {
        "model_name_or_path": model,
        "dataset_path": data,
        "output_dir": output,
        "max_steps": 1,
        "max_length": 128,
        "per_device_train_batch_size": 4,
        "eval_ratio": 0,
        "save_steps": 1000,
        "save_minutes": 0,
        "packing": "false",
        **overrides,
    }
    argv = [item for key, value in values.items() for item in (f"--{key}", str(value))]
    (args,) = HfArgumentParser(train_script.ScriptArguments).parse_args_into_dataclasses(argv)
    return train_script.build_trainer(args)


def first_batch(setup: train_script.TrainingSetup) -> dict:
    return next(iter(setup.trainer.get_train_dataloader()))


def trained_texts(setup: train_script.TrainingSetup, batch: dict) -> set[str]:
    """Per row of the padded batch: the text of the tokens the loss trains on."""
    tokenizer = setup.tokenizer
    return {
        tokenizer.decode(ids[labels != -100])
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True)
    }


def test_conversations_train_on_the_assistant_turns_only_and_honour_weight_0(tiny_llama, tmp_path):
    rows = [conversation(1), conversation(2, weight_first=0), conversation(3), conversation(4)]
    setup = setup_for(tiny_llama, write_jsonl(tmp_path / "chat.jsonl", rows), tmp_path / "out")
    batch = first_batch(setup)

    assert trained_texts(setup, batch) == {
        "Arr, 2!<|im_end|>\nYo ho, 4!<|im_end|>\n",
        "Yo ho, 8!<|im_end|>\n",  # the first answer has weight 0
        "Arr, 6!<|im_end|>\nYo ho, 12!<|im_end|>\n",
        "Arr, 8!<|im_end|>\nYo ho, 16!<|im_end|>\n",
    }
    # The system prompt, the questions and the role headers are in the input, never in the loss.
    full = setup.tokenizer.decode(batch["input_ids"][0])
    assert SYSTEM in full and "<|im_start|>assistant" in full
    # The tokenizer keeps its own template: nothing of training leaks into what is saved.
    assert not train_script.GENERATION_TAGS.search(setup.tokenizer.chat_template)


def test_loss_on_all_trains_on_every_real_token(tiny_llama, tmp_path):
    rows = [conversation(i) for i in range(4)]
    setup = setup_for(
        tiny_llama, write_jsonl(tmp_path / "chat.jsonl", rows), tmp_path / "out", loss_on="all"
    )
    batch = first_batch(setup)
    real = batch["attention_mask"] == 1
    assert (batch["labels"][real] == batch["input_ids"][real]).all()
    assert (batch["labels"][~real] == -100).all()


def test_prompt_completion_rows_train_on_the_completion_only_unless_told(tiny_llama, tmp_path):
    rows = [{"prompt": f"Q: what is {i} + {i}?\nA:", "completion": f" {2 * i}"} for i in range(4)]
    data = write_jsonl(tmp_path / "pc.jsonl", rows)
    setup = setup_for(tiny_llama, data, tmp_path / "out")
    eos = setup.tokenizer.eos_token
    assert trained_texts(setup, first_batch(setup)) == {f" {2 * i}{eos}" for i in range(4)}

    everything = setup_for(tiny_llama, data, tmp_path / "out-all", loss_on="all")
    assert all(
        t.startswith("Q: what is") for t in trained_texts(everything, first_batch(everything))
    )


def test_packing_drops_the_padding_keeps_the_trained_tokens_and_each_example_to_itself(
    tiny_llama, tmp_path
):
    import torch

    # Rows of different lengths, short next to max_length: padding is most of a padded batch.
    rows = [conversation(i) for i in range(1, 9)]
    rows[0]["messages"][1]["content"] = "Tell me a long story about the sea, " * 4
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    results = {}
    for packing in ("false", "true"):
        results[packing] = train_script.main(
            _arguments(tiny_llama, data, tmp_path / packing, packing=packing)
        )
    padded, packed = results["false"], results["true"]
    assert padded["sft"]["packing"] is False and packed["sft"]["packing"] is True
    assert padded["padded_share"] > 0.1 and packed["padded_share"] == 0
    assert packed["tokens_seen"] == padded["tokens_seen"]  # every row, once
    assert packed["tokens_trained"] == padded["tokens_trained"]
    assert packed["global_step"] < padded["global_step"]  # fewer, fuller steps

    # The packed batch: one flattened row, position ids restarting at every example, and each
    # example's logits the same as when it runs alone (no attention across examples).
    setup = setup_for(tiny_llama, data, tmp_path / "check", packing="true", max_length=512)
    batch = first_batch(setup)
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
    positions = batch["position_ids"][0]
    starts = (positions == 0).nonzero().flatten().tolist()
    assert len(starts) > 1
    bounds = [*starts, positions.numel()]
    model = setup.trainer.model.eval()
    with torch.no_grad():
        together = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        for begin, end in zip(bounds, bounds[1:], strict=False):
            assert positions[begin:end].tolist() == list(range(end - begin))
            alone = model(input_ids=batch["input_ids"][:, begin:end]).logits
            torch.testing.assert_close(together[:, begin:end], alone, rtol=1e-4, atol=1e-4)


def _arguments(model: Path, data: Path, output: Path, **overrides) -> train_script.ScriptArguments:
    from transformers import HfArgumentParser

    values = {
        "model_name_or_path": model,
        "dataset_path": data,
        "output_dir": output,
        "num_train_epochs": 1,
        "max_length": 512,
        "per_device_train_batch_size": 4,
        "eval_ratio": 0,
        "save_steps": 1000,
        "save_minutes": 0,
        **overrides,
    }
    argv = [item for key, value in values.items() for item in (f"--{key}", str(value))]
    (args,) = HfArgumentParser(train_script.ScriptArguments).parse_args_into_dataclasses(argv)
    return args


def test_progress_lines_report_real_tokens_per_second_and_the_padded_share(
    tiny_llama, tmp_path, capsys
):
    data = write_jsonl(tmp_path / "chat.jsonl", [conversation(i) for i in range(8)])
    train_script.main(_arguments(tiny_llama, data, tmp_path / "out", max_steps=2))
    lines = [
        json.loads(line.removeprefix("LMFT_PROGRESS "))
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("LMFT_PROGRESS ") and '"loss"' in line
    ]
    assert lines and all(line["tokens_per_second"] > 0 for line in lines)
    assert all(0 <= line["padded_share"] < 1 for line in lines)
    assert lines[-1]["tokens_trained"] < lines[-1]["tokens_seen"]  # answers only


def test_qlora_on_a_machine_without_a_gpu_is_refused_before_anything_is_spent(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", [conversation(i) for i in range(4)])
    output = tmp_path / "out"
    command = [
        sys.executable, str(TRAIN_SCRIPT), "--model_name_or_path", str(tiny_llama),
        "--dataset_path", str(data), "--output_dir", str(output), "--quantize", "4bit",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "lora.quantize: 4bit (QLoRA) needs a CUDA GPU" in result.stderr
    assert not output.exists()  # no model loaded, nothing written

    # The worker refuses it earlier still: in the preflight, before the budget gate.
    request = FineTuneRequest.model_validate(
        {
            "base_model": str(tiny_llama),
            "dataset": {"path": str(data)},
            "lora": {"quantize": "4bit"},
            "deploy": None,
        }
    )
    problems = request_problems(request, str(tiny_llama))
    assert any("lora.quantize: 4bit (QLoRA) needs a CUDA GPU" in p for p in problems)
