"""`lmft models list|show` read the registry; `lmft deploy --rollback` says why when there is
nothing to roll back to."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from tasks.registry.store import ModelRegistry
from tests.tasks.registry.test_store import model, served


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_server) -> ModelRegistry:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    monkeypatch.setenv("LMFT_LEDGER_URL", url)
    return ModelRegistry(url)


def test_models_list_and_show_give_lineage_and_where_each_serves(registry: ModelRegistry):
    for run, loss in (("a1", 2.0), ("b2", 1.5)):
        registry.register(model(run, eval_loss=loss))
    registry.record_deployment(served("a1"), model_id="a1", deployed_by="ops")
    registry.record_deployment(served("b2"), model_id="b2", deployed_by="ops")

    listing = CliRunner().invoke(app, ["models", "list"])
    assert listing.exit_code == 0, listing.output
    lines = {ln.split()[1]: ln for ln in listing.output.splitlines() if ln.startswith("pirate ")}
    assert "local/pirate" in lines["b2"] and "not serving" in lines["a1"]
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in lines["a1"] and "b" * 12 in lines["b2"]

    shown = CliRunner().invoke(app, ["models", "show", "pirate"])
    assert shown.exit_code == 0, shown.output
    assert "replaced a1" in shown.output and "sha256 " + "a" * 64 in shown.output

    missing = CliRunner().invoke(app, ["models", "show", "nobody"])
    assert missing.exit_code == 1 and "no model named 'nobody'" in missing.output


def test_rollback_with_nothing_served_says_so(registry: ModelRegistry):
    result = CliRunner().invoke(app, ["deploy", "--rollback", "pirate"])
    assert result.exit_code == 1
    assert "no registered deploy serves 'pirate'" in result.output
    refused = CliRunner().invoke(app, ["deploy", "x.gguf", "--rollback", "pirate"])
    assert refused.exit_code == 2 and "takes no GGUF argument" in refused.output
