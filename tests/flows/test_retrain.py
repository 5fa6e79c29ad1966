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


def latest_artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return found[0]


def test_retrain_deploys_only_a_better_model_and_rollback_restores_the_previous(
    tmp_path: Path, tiny_llama: Path, prefect_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three retrainings behind one served name: a first model is deployed (promotion always),
    a worse one is trained, registered and kept back (if_better), a better one replaces the
    first; a rollback restores the first; `lmft models list` shows all three."""
    from typer.testing import CliRunner

    from cli import app
    from flows.deploy import deploy
    from schemas.registry import Promotion
    from tasks.registry import model_registry
    from tasks.serving.local import find_local_server, stop_local_server

    monkeypatch.setenv("LMFT_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Say hello number {i}"},
                {
                    "role": "assistant",
                    "content": f"Ahoy {i}, matey! The sea be wide and the wind be fair.",
                },
            ]
        }
        for i in range(40)
    ]
    data = tmp_path / "chats.jsonl"
    name = "tinypromo"

    def retrain_with(rows_: list[dict], promotion: Promotion, steps: int, lr: float):
        write_rows(data, rows_)
        request = FineTuneRequest(
            base_model=str(tiny_llama),
            dataset=DatasetSource(path=str(data)),
            hyperparameters=Hyperparameters(
                max_steps=steps, batch_size=2, max_length=64, learning_rate=lr
            ),
            output_name="tiny-promo",
            gguf={"quant_types": ["Q8_0"], "prompts": ["Hello?"], "max_answer_tokens": 8},
            deploy={"target": "local", "name": name},
        )
        spec = f"promo-{tmp_path.name.lower().replace('_', '-')}"
        # Small steps: more training collapses the tiny random model onto "\n" (an empty answer
        # fails the deploy's smoke test). Margin 0: its NLL moves little; the direction counts.
        RetrainSpec(
            request=request.model_dump(mode="json"), promotion=promotion, promotion_margin=0.0
        ).save(spec, overwrite=True)
        return retrain(spec)

    try:
        first = retrain_with(rows, Promotion.ALWAYS, steps=2, lr=2e-4)
        assert first.summary is not None and first.summary.deployment_status == "serving"
        first_id, first_gguf = first.summary.registry_id, first.summary.gguf

        worse = retrain_with(rows[1:], Promotion.IF_BETTER, steps=1, lr=1e-7)
        assert worse.outcome is RetrainOutcome.TRAINED and worse.summary is not None
        decision = worse.summary.promotion
        assert decision is not None and not decision.deploy, decision
        assert worse.summary.deployment_status is None  # trained, not deployed
        assert "kept, not deployed" in worse.reason and worse.summary.registry_id in worse.reason
        assert decision.incumbent is not None and decision.incumbent.model_id == first_id
        assert decision.candidate.mean_nll > decision.incumbent.mean_nll  # type: ignore[union-attr,operator]
        artifact = latest_artifact("promotion-decision").data
        assert f"{decision.candidate.mean_nll:.4f}" in artifact  # type: ignore[union-attr]
        assert f"{decision.incumbent.mean_nll:.4f}" in artifact
        registry = model_registry()
        assert registry.serving("local", name).model_id == first_id  # the served model is unchanged
        assert find_local_server(name).gguf_path == str(Path(first_gguf).resolve())  # type: ignore[union-attr,arg-type]
        kept = registry.get(worse.summary.registry_id)  # type: ignore[arg-type]
        assert kept.serving == [] and kept.promotion is not None and kept.gguf_path

        better = retrain_with(rows[2:], Promotion.IF_BETTER, steps=4, lr=3e-4)
        assert better.summary is not None and better.summary.promotion is not None
        assert better.summary.promotion.deploy, better.summary.promotion.reason
        assert better.summary.deployment_status == "serving"
        served = registry.serving("local", name)
        assert (
            served.model_id == better.summary.registry_id and served.replaced_model_id == first_id
        )

        restored = deploy(None, name, "local", rollback=True)
        assert restored.gguf_path == str(Path(first_gguf).resolve())  # type: ignore[arg-type]
        back = registry.serving("local", name)
        assert back.model_id == first_id and back.rollback
        assert back.replaced_model_id == better.summary.registry_id

        listing = CliRunner().invoke(app, ["models", "list"])
        assert listing.exit_code == 0, listing.output
        for summary in (first.summary, worse.summary, better.summary):
            line = next(ln for ln in listing.output.splitlines() if summary.registry_id in ln)
            assert "tiny-promo" in line and str(tiny_llama.name) in line
            assert ("local/" + name in line) is (summary is first.summary)
        shown = CliRunner().invoke(app, ["models", "show", name])
        assert shown.exit_code == 0 and "rollback to it" in shown.output, shown.output
    finally:
        stop_local_server(name)
