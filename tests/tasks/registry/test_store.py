"""The model registry on SQLite and on PostgreSQL (the `ledger_url` fixture): models are
registered once per training run, each deploy records what it replaced, a failed deploy changes
nothing, and a rollback finds the model the served one replaced."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from schemas.registry import RegisteredModel, RegisteredVariant
from schemas.serving import ServedModel, ServeStatus
from tasks.costs.ledger import Ledger
from tasks.registry.store import ModelRegistry, models, rows_for_table


def model(run: str, *, eval_loss: float, name: str = "pirate") -> RegisteredModel:
    return RegisteredModel(
        id=run,
        name=name,
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        dataset="examples/pirate_chat.jsonl",
        dataset_sha256=run[0] * 64,
        method="sft",
        flow_run_id=run,
        jobs=[f"job-{run}"],
        cost_usd=0.0,
        eval_loss=eval_loss,
        gguf_path=f"/models/{run}/pirate-Q8_0.gguf",
        variants=[
            RegisteredVariant(
                quant_type="Q8_0",
                path=f"/models/{run}/pirate-Q8_0.gguf",
                size_bytes=1000,
                mean_nll=eval_loss,
                delta_nll=0.01,
                passed=True,
                chosen=True,
            )
        ],
    )


def served(
    run: str, status: ServeStatus = ServeStatus.SERVING, name: str = "pirate"
) -> ServedModel:
    return ServedModel(
        target="local", name=name, status=status, gguf_path=f"/models/{run}/pirate-Q8_0.gguf"
    )


def test_deploys_record_what_they_replace_and_rollback_restores_the_previous(ledger_url: str):
    registry = ModelRegistry(ledger_url)
    for run, loss in (("a1", 2.0), ("b2", 1.5), ("c3", 1.9)):
        registry.register(model(run, eval_loss=loss))

    first = registry.record_deployment(served("a1"), model_id="a1", deployed_by="ops")
    assert first.replaced_model_id is None
    second = registry.record_deployment(served("b2"), model_id="b2", deployed_by="ops")
    assert second.replaced_model_id == "a1"
    failed = registry.record_deployment(served("c3", ServeStatus.FAILED), model_id="c3")
    assert failed.status == "failed"
    assert registry.serving("local", "pirate").model_id == "b2"  # a failed deploy changes nothing

    current, previous = registry.rollback_target("local", "pirate")
    assert (current.model_id, previous.id) == ("b2", "a1")
    back = registry.record_deployment(served("a1"), model_id="a1", deployed_by="ops", rollback=True)
    assert back.rollback and back.replaced_model_id == "b2"
    assert registry.serving("local", "pirate").model_id == "a1"

    listed = {m.id: m for m in registry.entries()}
    assert [m.id for m in registry.entries()] == ["c3", "b2", "a1"]  # newest first
    assert listed["a1"].serving == ["local/pirate"] and listed["b2"].serving == []
    assert [e.rollback for e in listed["a1"].deployments] == [False, True]
    assert listed["c3"].deployments[0].status == "failed" and listed["c3"].serving == []
    rows = {r["id"]: r for r in rows_for_table(registry.entries())}
    assert rows["a1"]["serving"] == "local/pirate" and rows["b2"]["serving"] == "not serving"
    assert rows["b2"]["eval loss"] == "1.5000" and rows["b2"]["dataset sha256"] == "b" * 12
    assert registry.model_of_file("/models/b2/pirate-Q8_0.gguf").id == "b2"
    assert [m.id for m in registry.find("pirate")] == ["c3", "b2", "a1"]
    assert [m.id for m in registry.find("b2")] == ["b2"]


def test_registering_a_run_twice_updates_its_row(ledger_url: str):
    registry = ModelRegistry(ledger_url)
    registry.register(model("a1", eval_loss=2.0))
    again = registry.register(model("a1", eval_loss=1.25))
    assert again.eval_loss == 1.25
    with Ledger(ledger_url).engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(models)).scalar_one() == 1
    # the budget ledger's tables live beside the registry's, untouched
    assert Ledger(ledger_url).totals().open_reservations == 0


def test_rollback_says_why_when_there_is_nothing_to_roll_back_to(ledger_url: str):
    registry = ModelRegistry(ledger_url)
    with pytest.raises(LookupError, match="no registered deploy serves 'pirate'"):
        registry.rollback_target("local", "pirate")
    registry.register(model("a1", eval_loss=2.0))
    registry.record_deployment(served("a1"), model_id="a1")
    with pytest.raises(LookupError, match="replaced no registered model"):
        registry.rollback_target("local", "pirate")
    with pytest.raises(KeyError, match="no model 'zz'"):
        registry.get("zz")
