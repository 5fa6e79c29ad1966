"""README's main job, end to end: SmolLM2 learns the sample's pirate style on this CPU, becomes a
GGUF that passes the quality gate, and answers in that style from the local server."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cli import app

ROOT = Path(__file__).resolve().parents[1]
PIRATE_MARKERS = re.compile(r"\b(arr|ahoy|aye|matey|fair winds|ye|be)\b", re.IGNORECASE)


def pirate_score(text: str) -> int:
    """How many pirate words the answer uses (the sample dataset's style)."""
    return len(PIRATE_MARKERS.findall(text))


def field(output: str, name: str) -> str:
    """The value printed after `name` in `lmft run`'s summary."""
    return next(
        line.split(None, 1)[1]
        for line in output.splitlines()
        if line.strip().startswith(name + " ")
    )


@pytest.mark.slow
def test_readme_main_job_trains_converts_and_serves_a_pirate(prefect_server):
    from tasks.jobs.base_model import materialize_embedded_model
    from tasks.reporting.samples import generate_answers
    from tasks.serving.local import local_name_for, stop_local_server

    try:
        result = CliRunner().invoke(app, ["run", str(ROOT / "examples" / "pirate_sft.yaml")])
        assert result.exit_code == 0, result.output

        model_dir = field(result.output, "model").strip()
        assert (Path(model_dir) / "model.safetensors").exists()
        first, final = (float(x) for x in field(result.output, "loss").split(" -> "))
        assert final < first, "the training loss must go down"

        prompts = ["What is the capital of France?", "How do I boil an egg?", "What is 6 times 7?"]
        base = generate_answers(str(materialize_embedded_model()), prompts)
        tuned = generate_answers(model_dir, prompts)
        assert tuned != base
        assert all(pirate_score(answer) >= 1 for answer in tuned), tuned
        assert sum(map(pirate_score, base)) <= 1, base

        gguf = Path(field(result.output, "GGUF").strip())
        assert gguf.suffix == ".gguf" and gguf.exists()
        url = field(result.output, "serving").split()[0]
        reply = httpx.post(
            f"{url.rstrip('/')}/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 48,
            },
            timeout=120,
        ).json()["choices"][0]["message"]["content"]
        assert pirate_score(reply) >= 1, reply
    finally:
        stop_local_server(local_name_for("smollm2-135m-pirate"))
