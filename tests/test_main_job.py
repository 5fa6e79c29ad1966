"""README's main job, end to end: SmolLM2 learns the sample's pirate style on this CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

ROOT = Path(__file__).resolve().parents[1]
PIRATE_MARKERS = ("arr", "ahoy", "aye", "matey", "fair winds")


def pirate_score(text: str) -> int:
    text = text.lower()
    return sum(marker in text for marker in PIRATE_MARKERS)


@pytest.mark.slow
def test_readme_main_job_trains_smollm2_into_a_pirate(prefect_server):
    result = CliRunner().invoke(app, ["run", str(ROOT / "examples" / "pirate_sft.yaml")])
    assert result.exit_code == 0, result.output

    from prefect import get_client  # noqa: F401  (the run is recorded on the test server)

    model_dir = next(line.split()[-1] for line in result.output.splitlines() if line.strip().startswith("model "))
    assert (Path(model_dir) / "model.safetensors").exists()
    first, final = (float(x) for x in next(
        line.split()[1:4:2] for line in result.output.splitlines() if line.strip().startswith("loss ")
    ))
    assert final < first, "the training loss must go down"

    from tasks.base_model import materialize_embedded_model
    from tasks.samples import generate_answers

    prompts = ["What is the capital of France?", "How do I boil an egg?", "What is 6 times 7?"]
    base = generate_answers(str(materialize_embedded_model()), prompts)
    tuned = generate_answers(model_dir, prompts)
    assert tuned != base
    assert sum(map(pirate_score, tuned)) >= len(prompts), tuned
    assert sum(map(pirate_score, base)) == 0, base
