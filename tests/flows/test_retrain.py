"""`retrain`: an unchanged dataset is skipped, a changed one is trained and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blocks.retrain import RetrainSpec
from flows.retrain import retrain
from schemas.request import DatasetSource, FineTuneRequest, Hyperparameters
from tasks.retrain import RetrainOutcome, fingerprint_dataset

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Say hello number {i}"},
            {"role": "assistant", "content": f"Ahoy {i}!"},
        ]
    }
    for i in range(12)
]


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def spec_name(tmp_path: Path, tiny_llama: Path, prefect_server) -> str:
    data = tmp_path / "chats.jsonl"
    write_rows(data, ROWS)
    request = FineTuneRequest(
        base_model=str(tiny_llama),
        dataset=DatasetSource(path=str(data)),
        hyperparameters=Hyperparameters(max_steps=2, batch_size=2, max_length=64),
        output_name="tiny-retrain",
        gguf=None,
        deploy=None,
    )
    name = f"retrain-{tmp_path.name.lower().replace('_', '-')}"
    RetrainSpec(request=request.model_dump(mode="json")).save(name, overwrite=True)
    return name


def test_retrain_skips_unchanged_dataset_and_trains_changed_one(spec_name: str) -> None:
    spec = RetrainSpec.load(spec_name)
    request = FineTuneRequest.model_validate(spec.request)
    spec.last_fingerprint = fingerprint_dataset.fn(request.dataset).token
    spec.save(spec_name, overwrite=True)

    unchanged = retrain(spec_name)
    assert unchanged.outcome is RetrainOutcome.SKIPPED
    assert unchanged.reason.startswith("dataset unchanged")
    assert unchanged.summary is None

    write_rows(Path(request.dataset.path), ROWS + ROWS[:2])
    changed = retrain(spec_name)
    assert changed.outcome is RetrainOutcome.TRAINED
    assert changed.summary is not None and changed.summary.steps == 2
    assert Path(changed.summary.model_dir, "config.json").exists()
    stored = RetrainSpec.load(spec_name)
    assert stored.last_fingerprint == changed.fingerprint.token != unchanged.fingerprint.token
    assert stored.last_model == changed.summary.model_dir

    again = retrain(spec_name)
    assert again.outcome is RetrainOutcome.SKIPPED


def test_retrain_names_a_missing_spec(prefect_server) -> None:
    with pytest.raises(ValueError, match="no RetrainSpec block named 'nope'"):
        retrain("nope")
