"""The promotion decision: `always` and `never` need no figures; `if_better` deploys only a
candidate that beats the served model by the margin and is not worse than the base, and the
artifact shows every figure. Scoring uses llama-cpp-python on a real GGUF (the embedded SmolLM2)."""

from __future__ import annotations

import math

import pytest

from schemas.gguf import GGUFSettings
from schemas.registry import ModelEvaluation, Promotion
from tasks.registry.promotion import decide_promotion, evaluate_gguf, promotion_markdown


def scored(role: str, nll: float | None, error: str | None = None) -> ModelEvaluation:
    return ModelEvaluation(
        role=role, model_id=f"{role}-id", gguf_path=f"/m/{role}.gguf", mean_nll=nll, error=error
    )


def test_always_and_never_decide_without_figures():
    assert decide_promotion(Promotion.ALWAYS, 0.01).deploy
    never = decide_promotion(Promotion.NEVER, 0.01)
    assert not never.deploy and "registered, not deployed" in never.reason


@pytest.mark.parametrize(
    ("candidate", "incumbent", "base", "deploy", "why"),
    [
        (1.00, 1.20, 2.0, True, "beats the served model"),
        (1.195, 1.20, 2.0, False, "does not beat the served model by the margin"),
        (1.30, 1.20, 2.0, False, "does not beat the served model"),
        (1.00, None, 0.9, False, "worse than the base model"),
        (1.00, None, 2.0, True, "no model serves under this name yet"),
    ],
)
def test_if_better_needs_the_margin_over_the_served_model_and_no_loss_to_the_base(
    candidate, incumbent, base, deploy, why
):
    decision = decide_promotion(
        Promotion.IF_BETTER,
        0.01,
        candidate=scored("candidate", candidate),
        incumbent=scored("incumbent", incumbent) if incumbent is not None else None,
        base=scored("base", base),
        held_out_texts=4,
    )
    assert decision.deploy is deploy
    assert why in decision.reason
    markdown = promotion_markdown(decision)
    assert f"{candidate:.4f}" in markdown and f"{base:.4f}" in markdown
    if incumbent is not None:
        assert f"{incumbent:.4f}" in markdown and "incumbent-id" in markdown


def test_if_better_keeps_the_candidate_when_a_model_cannot_be_scored():
    decision = decide_promotion(
        Promotion.IF_BETTER,
        0.01,
        candidate=scored("candidate", 1.0),
        incumbent=scored("incumbent", None, error="the GGUF file /m/x.gguf is not on this worker"),
    )
    assert not decision.deploy and "not on this worker" in decision.reason


def test_a_real_gguf_is_scored_and_answers():
    from tasks.jobs.base_model import embedded_gguf_path

    settings = GGUFSettings(prompts=["Hello?"], max_answer_tokens=8, context_length=128)
    texts = [
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n"
    ]
    evaluation = evaluate_gguf.fn("incumbent", str(embedded_gguf_path()), texts, settings)
    assert evaluation.mean_nll is not None and math.isfinite(evaluation.mean_nll)
    assert evaluation.tokens > 5 and evaluation.answers[0].prompt == "Hello?"
    missing = evaluate_gguf.fn("incumbent", "/nowhere/model.gguf", texts, settings)
    assert missing.mean_nll is None and "not on this worker" in (missing.error or "")
