"""Every check a request allows before money is committed: the `finetune` flow runs it before the gate.

What the request names must exist (the deploy target's block, the credentials a remote backend or
a serverless-llm target needs), what a Hugging Face job must read must be shippable, and the
base model must be able to take `max_length` tokens. The dataset's own checks (rows, format vs
method) are the validation task's; the hardware and money checks are the estimate's and the
gate's. All problems are reported at once, each naming its field and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task

from schemas.request import Backend, FineTuneRequest


class PreflightFailed(ValueError):
    """The request cannot succeed as written; the message lists every reason (field: what to do)."""


def deploy_target_problems(request: FineTuneRequest) -> list[str]:
    """The deploy target must be 'local' or a saved ServerlessLLMTarget block with GitHub credentials."""
    if request.deploy is None:
        return []
    from tasks.serving.deploy import resolve_target

    try:
        target = resolve_target(request.deploy.target)
    except ValueError as exc:
        return [f"deploy.target: {exc}"]
    if target is not None and target.token() is None:
        return [
            f"deploy.target: the ServerlessLLMTarget block {request.deploy.target!r} has no GitHub "
            "credentials; save it with a GitHubCredentials token (contents, pull-requests and "
            "actions write access)"
        ]
    return []


def remote_backend_problems(request: FineTuneRequest, model: str) -> list[str]:
    """A Hugging Face job needs credentials, and inputs it can read (no local folders)."""
    if request.backend is Backend.LOCAL:
        return []
    from blocks.huggingface import load_hf_credentials
    from tasks.jobs.training import check_shippable

    problems = []
    try:
        load_hf_credentials()
    except RuntimeError as exc:
        problems.append(f"backend: {exc}")
    try:
        check_shippable(request, model)
    except ValueError as exc:
        problems.append(str(exc))
    return problems


def context_window_problems(request: FineTuneRequest, model: str) -> list[str]:
    """`max_length` must fit the base model's context (read from a local model's config.json).

    A Hub model's config is read by the estimate, which runs before the gate too.
    """
    config = Path(model).expanduser() / "config.json"
    if not config.is_file():
        return []
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        return [f"base_model: cannot read {config}: {exc}"]
    text_config = data.get("text_config") or {}
    limit = text_config.get("max_position_embeddings") or data.get("max_position_embeddings")
    max_length = request.hyperparameters.max_length
    if isinstance(limit, int) and max_length > limit:
        return [
            f"hyperparameters.max_length: {max_length} is longer than the base model's context "
            f"({limit} tokens, {config}); set it to {limit} or less"
        ]
    return []


def quantization_problems(request: FineTuneRequest) -> list[str]:
    """QLoRA (`lora.quantize`) on the local backend needs this machine's CUDA GPU and bitsandbytes.

    The training script's own rule; on `hf-jobs` the flavor is a GPU and the job installs bitsandbytes.
    """
    if request.lora.quantize is None or request.backend is not Backend.LOCAL:
        return []
    from training.train import device_class, quantization_problem

    problem = quantization_problem(
        request.lora.quantize, use_lora=request.lora.enabled, device=device_class()
    )
    return [problem] if problem else []


def request_problems(request: FineTuneRequest, model: str) -> list[str]:
    """Everything wrong with `request` (training `model`) that can be seen before spending anything."""
    return [
        *remote_backend_problems(request, model),
        *quantization_problems(request),
        *context_window_problems(request, model),
        *deploy_target_problems(request),
    ]


@task(name="preflight", timeout_seconds=300)  # reads the Hub: model config, dataset
def preflight_request(request: FineTuneRequest, model: str) -> None:
    """Refuse the request before the budget gate if it cannot succeed; log what was checked."""
    problems = request_problems(request, model)
    if problems:
        raise PreflightFailed(
            "the request cannot succeed; nothing was reserved, trained or converted:\n"
            + "\n".join(f"  {p}" for p in problems)
        )
    get_run_logger().info(
        "preflight passed: backend %s, deploy target %s, max_length %d",
        request.backend.value,
        request.deploy.target if request.deploy else "none",
        request.hyperparameters.max_length,
    )
