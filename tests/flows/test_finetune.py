"""The `finetune` flow trains a tiny llama with every method and leaves a model that generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.finetune import finetune
from schemas.request import FineTuneRequest
from schemas.status import Stage

USER = {"role": "user", "content": "Say hello to the crew."}
DATASETS = {
    "sft": [
        {"messages": [USER, {"role": "assistant", "content": f"Ahoy crew number {i}!"}]}
        for i in range(12)
    ],
    "dpo": [
        {
            "prompt": [USER],
            "chosen": [{"role": "assistant", "content": f"Ahoy {i}!"}],
            "rejected": [{"role": "assistant", "content": f"Hello {i}."}],
        }
        for i in range(12)
    ],
    "grpo": [
        {"prompt": [{"role": "user", "content": f"Tell me about ship {i}."}]} for i in range(12)
    ],
    "kto": [
        {
            "prompt": [USER],
            "completion": [{"role": "assistant", "content": f"Ahoy {i}!" if i % 2 else f"Hi {i}."}],
            "label": bool(i % 2),
        }
        for i in range(12)
    ],
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("method", ["sft", "dpo", "grpo", "kto"])
def test_each_method_trains_and_the_checkpoint_generates(
    prefect_server, tiny_llama, tmp_path, method
):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_jsonl(tmp_path / f"{method}.jsonl", DATASETS[method])
    request = FineTuneRequest.model_validate(
        {
            "base_model": str(tiny_llama),
            "dataset": {"path": str(data)},
            "method": method,
            "output_name": f"tiny-{method}",
            "gguf": None,
            "deploy": None,
            "hyperparameters": {
                "max_steps": 2,
                "batch_size": 2,
                "num_generations": 2,
                "max_length": 64,
                "max_completion_length": 8,
            },
        }
    )

    summary = finetune(request)

    assert summary.steps == 2 and summary.final_loss is not None
    assert set(summary.step_seconds) >= {"validate", "estimate", "train"}
    model_dir = Path(summary.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.chat_template, "the chat template must travel with the model"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(
        [USER], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 4
    assert not any("lora" in k for k in model.state_dict()), "the adapter must be merged"


def test_whole_pipeline_publishes_artifacts_converts_and_serves(
    prefect_server, tiny_llama, tmp_path
):
    """validate → … → GGUF + quality gate → local server that answers; progress and summary artifacts."""
    import anyio
    import httpx
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks.serving.local import stop_local_server

    data = write_jsonl(tmp_path / "sft.jsonl", DATASETS["sft"])
    request = FineTuneRequest.model_validate(
        {
            "base_model": str(tiny_llama),
            "dataset": {"path": str(data)},
            "output_name": "tiny-artifacts",
            "hyperparameters": {"max_steps": 2, "batch_size": 2, "max_length": 64},
            "gguf": {"quant_types": ["Q8_0"], "prompts": ["Hello?"], "max_answer_tokens": 8},
            "deploy": {"target": "local", "name": "tinyartifacts"},
        }
    )
    try:
        state = finetune(request, return_state=True)
        summary = state.result()

        assert summary.gguf and Path(summary.gguf).exists() and summary.gguf.endswith(".gguf")
        assert summary.gguf_decision
        assert summary.deployment_status == "serving"
        models = httpx.get(f"{summary.deployment_url.rstrip('/')}/v1/models", timeout=30).json()
        assert models["data"], "the local server lists the deployed model"
    finally:
        stop_local_server("tinyartifacts")

    async def read():
        async with get_client() as client:
            progress = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(like_=f"training-progress-{summary.job_id[:14]}")
                )
            )
            run_artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["finetune-summary"]))
            )
            return progress, run_artifacts

    progress, summaries = anyio.run(read)
    run_status = anyio.run(read_run_status, state.state_details.flow_run_id)
    assert run_status.stage is Stage.COMPLETED and run_status.gate.decision.lets_through
    assert run_status.training.step == run_status.training.total_steps == 2
    assert run_status.links.gguf == summary.gguf == summary.links.gguf
    assert run_status.links.serving == summary.deployment_url
    assert set(run_status.step_seconds) >= {"train", "gguf", "deploy"}
    assert summary.cost_usd == run_status.cost_so_far_usd == 0.0
    assert progress and progress[0].type == "progress" and float(progress[0].data) == 100.0
    assert any("tiny-artifacts" in a.data and "Wall time per step" in a.data for a in summaries)


async def read_run_status(flow_run_id):
    from prefect import get_client

    from mcp_adapter.runs import read_status

    async with get_client() as client:
        return await read_status(client, flow_run_id)


def test_bad_dataset_columns_stop_the_flow_before_training(
    prefect_server, tiny_llama, tmp_path, lmft_home
):
    data = write_jsonl(tmp_path / "wrong.jsonl", [{"question": "q", "answer": "a"}] * 4)
    request = FineTuneRequest.model_validate(
        {
            "base_model": str(tiny_llama),
            "dataset": {"path": str(data)},
            "method": "dpo",
            "gguf": None,
            "deploy": None,
        }
    )
    jobs_before = set((lmft_home / "jobs").glob("*")) if (lmft_home / "jobs").exists() else set()

    state = finetune(request, return_state=True)

    assert state.is_failed()
    assert "chosen" in state.message or "chosen" in str(state.result(raise_on_failure=False))
    jobs_after = set((lmft_home / "jobs").glob("*")) if (lmft_home / "jobs").exists() else set()
    assert jobs_after == jobs_before
