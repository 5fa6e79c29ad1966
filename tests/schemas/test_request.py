"""FineTuneRequest refuses bad input, naming the field and the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.request import DEFAULT_BASE_MODEL, Backend, FineTuneRequest, Method


@pytest.fixture
def data_file(tmp_path: Path) -> str:
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    return str(path)


def refusal(**fields) -> str:
    with pytest.raises(ValidationError) as info:
        FineTuneRequest.model_validate(fields)
    return str(info.value)


def test_defaults_are_a_local_lora_sft_run_of_the_embedded_model(data_file):
    request = FineTuneRequest(dataset={"path": data_file})
    assert request.base_model == DEFAULT_BASE_MODEL
    assert request.method is Method.SFT and request.backend is Backend.LOCAL
    assert request.lora.enabled and request.hardware == "auto"
    assert request.output_name == "smollm2-135m-instruct-sft-chat"


def test_hub_ids_and_local_files_are_accepted(data_file):
    request = FineTuneRequest.model_validate(
        {
            "base_model": "Qwen/Qwen2.5-0.5B-Instruct",
            "dataset": {"path": "trl-lib/Capybara", "split": "train", "revision": "main"},
            "method": "dpo",
            "backend": "hf-jobs",
            "hardware": "a10g-small",
            "output_name": "qwen-capybara.v1",
        }
    )
    assert request.method is Method.DPO and not request.dataset.is_local
    assert FineTuneRequest(dataset={"path": data_file}).dataset.is_local


def test_unknown_fields_are_refused(data_file):
    message = refusal(dataset={"path": data_file}, learning_rate=1e-4)
    assert "learning_rate" in message and "Extra inputs are not permitted" in message
    assert "colour" in refusal(dataset={"path": data_file, "colour": "red"})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"method": "ppo"}, "method"),
        ({"backend": "aws"}, "backend"),
        ({"hardware": "A10G Small!"}, "hardware"),
        ({"base_model": "not a/valid--id"}, "base_model"),
        ({"base_model": "a/b/c"}, "base_model"),
        ({"base_model": "./no/such/checkpoint"}, "does not exist"),
        ({"output_name": "bad--name"}, "output_name"),
        ({"output_name": "-starts-with-dash"}, "output_name"),
        ({"output_name": "x" * 97}, "output_name"),
        ({"hyperparameters": {"learning_rate": -1}}, "learning_rate"),
        ({"hyperparameters": {"batch_size": 0}}, "batch_size"),
        ({"hyperparameters": {"epochs": 1000}}, "epochs"),
        ({"hyperparameters": {"max_length": 8}}, "max_length"),
        ({"lora": {"r": 0}}, "lora.r"),
        ({"lora": {"dropout": 1.5}}, "dropout"),
        ({"hyperparameters": {"reward_functions": ["made_up"]}}, "reward_functions"),
    ],
)
def test_bad_values_name_the_field(data_file, fields, expected):
    assert expected in refusal(dataset={"path": data_file}, **fields)


def test_missing_local_dataset_file_is_refused(tmp_path):
    message = refusal(dataset={"path": str(tmp_path / "nope.jsonl")})
    assert "dataset.path" in message and "does not exist" in message


def test_unsupported_local_file_type_is_refused(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello")
    assert "not a supported file type" in refusal(dataset={"path": str(path)})


def test_config_and_revision_only_apply_to_hub_datasets(data_file):
    assert "Hub datasets" in refusal(dataset={"path": data_file, "revision": "main"})


def test_grpo_batch_must_be_a_multiple_of_generations(data_file):
    message = refusal(
        dataset={"path": data_file},
        method="grpo",
        hyperparameters={"batch_size": 3, "num_generations": 4},
    )
    assert "num_generations" in message


def test_dataset_is_required():
    assert "dataset" in refusal(method="sft")


def test_evaluation_and_checkpoint_defaults(data_file):
    request = FineTuneRequest(dataset={"path": data_file})
    assert request.evaluation.eval_ratio == 0.05 and request.evaluation.eval_dataset is None
    assert request.checkpoints.save_steps is None and request.checkpoints.save_minutes == 20
    assert FineTuneRequest(dataset={"path": data_file}, evaluation=None).evaluation is None


def test_save_steps_must_be_a_multiple_of_eval_steps(data_file):
    message = refusal(
        dataset={"path": data_file},
        evaluation={"eval_steps": 3},
        checkpoints={"save_steps": 5},
    )
    assert "checkpoints.save_steps: 5 is not a multiple of evaluation.eval_steps (3)" in message


def test_a_missing_eval_dataset_is_refused_with_its_field(data_file, tmp_path):
    message = refusal(
        dataset={"path": data_file},
        evaluation={"eval_dataset": {"path": str(tmp_path / "missing.jsonl")}},
    )
    assert "evaluation.eval_dataset" in message and "does not exist" in message
