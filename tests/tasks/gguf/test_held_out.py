"""The GGUF quality gate's rows are the ones the training job held out, never trained-on rows."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.request import FineTuneRequest
from tasks.gguf.held_out import held_out_dataset, held_out_split, select_held_out
from training.train import ScriptArguments, load_training_dataset, split_evaluation


def test_the_gate_reads_exactly_the_rows_train_py_held_out(tmp_path, tokenizer_dir):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Question number {i}?"},
                {"role": "assistant", "content": f"Answer number {i}."},
            ]
        }
        for i in range(60)
    ]
    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    request = FineTuneRequest.model_validate(
        {
            "dataset": {"path": str(data)},
            "hyperparameters": {"seed": 7},
            "evaluation": {"eval_ratio": 0.1},
        }
    )
    args = ScriptArguments(
        model_name_or_path="unused",
        dataset_path=str(data),
        output_dir=str(tmp_path),
        seed=7,
        eval_ratio=0.1,
    )
    train, held = split_evaluation(args, load_training_dataset(args))
    assert len(held) == 6 and len(train) == 54

    texts = select_held_out.fn(
        held_out_dataset(request), str(tokenizer_dir), rows=8, split=held_out_split(request)
    )

    questions = {m["content"] for row in held for m in row["messages"] if m["role"] == "user"}
    trained = {m["content"] for row in train for m in row["messages"] if m["role"] == "user"}
    assert len(texts) == 6
    assert all(any(q in t for q in questions) for t in texts)
    assert not any(q in t for t in texts for q in trained)


def test_a_separate_eval_dataset_is_what_the_gate_reads(tmp_path):
    data, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    for path in (data, held):
        path.write_text(json.dumps({"text": "hello"}) + "\n")
    request = FineTuneRequest.model_validate(
        {"dataset": {"path": str(data)}, "evaluation": {"eval_dataset": {"path": str(held)}}}
    )
    assert Path(held_out_dataset(request).path) == held and held_out_split(request) is None
