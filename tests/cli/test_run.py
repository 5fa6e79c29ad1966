"""`lmft run` refuses bad input with a clear message and a non-zero exit."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_missing_dataset_file(tmp_path):
    result = invoke("run", "--dataset", str(tmp_path / "missing.jsonl"))
    assert result.exit_code == 2
    assert "dataset.path" in result.output and "does not exist" in result.output


def test_bad_method(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    result = invoke("run", "--dataset", str(data), "--method", "ppo")
    assert result.exit_code == 2
    assert "method" in result.output and "'sft'" in result.output


def test_missing_config_file(tmp_path):
    result = invoke("run", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2 and "does not exist" in result.output


def test_config_with_unknown_field(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    config = tmp_path / "job.yaml"
    config.write_text(f"dataset: {data.name}\nlearning_rate: 0.1\n")
    result = invoke("run", str(config))
    assert result.exit_code == 2
    assert "learning_rate" in result.output and "not permitted" in result.output


def test_unknown_column_fails_the_run_with_the_columns_named(prefect_server, tiny_llama, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"question": "q", "answer": "a"}) for _ in range(4)))
    result = invoke("run", "--dataset", str(data), "--model", str(tiny_llama), "--max-steps", "1")
    assert result.exit_code == 1
    assert "question" in result.output and "messages" in result.output
