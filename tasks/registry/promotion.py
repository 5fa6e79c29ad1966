"""The promotion gate: does a newly trained model replace the one users are served now?

With `if_better`, the candidate's chosen GGUF, the GGUF serving under the same name (the
incumbent) and the base model converted to the same file type are each loaded with
llama-cpp-python and scored on the same held-out rows (mean NLL per token), and each answers
the quality prompts. The candidate is deployed only when its NLL is lower than the incumbent's
by at least the margin and not higher than the base model's. The decision and the figures
are a markdown artifact (`promotion-decision`).
"""

from __future__ import annotations

import gc
import hashlib
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from schemas.gguf import ConversionResult, GGUFLineage, GGUFSettings, QuantType
from schemas.jobs import TrainingResult
from schemas.registry import ModelEvaluation, Promotion, PromotionDecision, PromptAnswer
from schemas.request import FineTuneRequest
from tasks.paths import lmft_home

CANDIDATE, INCUMBENT, BASE = "candidate", "incumbent", "base"


@task(name="evaluate-gguf", persist_result=True, timeout_seconds=2 * 3600)  # may fetch the base
def evaluate_gguf(
    role: str,
    gguf_path: str,
    texts: list[str],
    settings: GGUFSettings,
    *,
    model_id: str | None = None,
) -> ModelEvaluation:
    """Score one GGUF on the held-out `texts` and let it answer the quality prompts."""
    from tasks.gguf.quality import chat_answers, load_gguf, score_texts

    if not Path(gguf_path).expanduser().is_file():
        return ModelEvaluation(
            role=role,
            model_id=model_id,
            gguf_path=gguf_path,
            error=f"the GGUF file {gguf_path} is not on this worker",
        )
    llm, _ = load_gguf(str(Path(gguf_path).expanduser()), settings)
    try:
        nll, tokens = score_texts(llm, texts, settings.context_length)
        answers, _ = chat_answers(llm, settings.prompts, settings.max_answer_tokens)
    finally:
        llm.close()
        del llm
        gc.collect()
    return ModelEvaluation(
        role=role,
        model_id=model_id,
        gguf_path=gguf_path,
        mean_nll=round(nll, 5),
        tokens=tokens,
        answers=[
            PromptAnswer(prompt=a.prompt, text=a.text, degenerate=a.degenerate) for a in answers
        ],
    )


def base_gguf(
    base_model: str, base_name: str, quant_type: QuantType, settings: GGUFSettings, texts: list[str]
) -> str:
    """The base model as a GGUF of `quant_type`, converted once per base model folder or Hub id."""
    from tasks.gguf.convert import compute_imatrix, convert_to_gguf, preflight_gguf, quantize_gguf

    lineage = GGUFLineage(base_model=base_name, name=Path(base_name).name or "base")
    wanted = [] if quant_type is settings.reference_type else [quant_type]
    settings = settings.model_copy(update={"quant_types": wanted})
    digest = hashlib.sha256(base_model.encode()).hexdigest()[:16]
    output = lmft_home() / "gguf" / "base-models" / digest
    output.mkdir(parents=True, exist_ok=True)
    plan = preflight_gguf(
        base_model, lineage, settings, output_dir=str(output), has_training_text=bool(texts)
    )
    reference = convert_to_gguf(plan, lineage, settings)
    if not wanted:
        return reference.path
    imatrix = (
        compute_imatrix(plan, reference, texts) if quant_type.needs_importance_matrix else None
    )
    return quantize_gguf(plan, reference, quant_type, lineage, settings, imatrix).path


def decide_promotion(
    promotion: Promotion,
    margin: float,
    *,
    candidate: ModelEvaluation | None = None,
    incumbent: ModelEvaluation | None = None,
    base: ModelEvaluation | None = None,
    held_out_texts: int = 0,
) -> PromotionDecision:
    """Deploy or keep, and one sentence saying why (the figures are in the decision)."""

    def verdict(deploy: bool, reason: str) -> PromotionDecision:
        return PromotionDecision(
            promotion=promotion,
            deploy=deploy,
            reason=reason,
            margin=margin,
            held_out_texts=held_out_texts,
            candidate=candidate,
            incumbent=incumbent,
            base=base,
        )

    if promotion is Promotion.ALWAYS:
        return verdict(
            True, "promotion is 'always': the model that passed the GGUF quality gate is deployed"
        )
    if promotion is Promotion.NEVER:
        return verdict(False, "promotion is 'never': the model is registered, not deployed")
    if candidate is None or candidate.mean_nll is None:
        why = candidate.error if candidate else "it was not evaluated"
        return verdict(False, f"kept, not deployed: the candidate could not be scored ({why})")
    for other in (incumbent, base):
        if other is not None and other.mean_nll is None:
            return verdict(
                False,
                f"kept, not deployed: the {other.role} model could not be scored ({other.error}); "
                "deploy it by hand (`lmft deploy`) or retrain with promotion 'always'",
            )
    figures = f"candidate NLL {candidate.mean_nll:.4f}"
    if incumbent is not None:
        assert incumbent.mean_nll is not None
        figures += f", served {incumbent.mean_nll:.4f}"
        if candidate.mean_nll > incumbent.mean_nll - margin:
            return verdict(
                False,
                f"kept, not deployed: it does not beat the served model by the margin "
                f"({figures} nats/token; needs at most {incumbent.mean_nll - margin:.4f})",
            )
    if base is not None:
        assert base.mean_nll is not None
        figures += f", base {base.mean_nll:.4f}"
        if candidate.mean_nll > base.mean_nll:
            return verdict(
                False, f"kept, not deployed: it is worse than the base model ({figures} nats/token)"
            )
    if incumbent is None:
        return verdict(
            True,
            f"deployed: no model serves under this name yet and it is not worse than the base ({figures})",
        )
    return verdict(
        True,
        f"deployed: it beats the served model by the margin and is not worse than the base ({figures})",
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:200]


def promotion_markdown(decision: PromotionDecision) -> str:
    """The decision and its figures, as the `promotion-decision` artifact shows them."""
    evaluations = [e for e in (decision.candidate, decision.incumbent, decision.base) if e]
    rows, answers = [], []
    for e in evaluations:
        nll = "n/a" if e.mean_nll is None else f"{e.mean_nll:.4f}"
        delta = ""
        if (
            e.mean_nll is not None
            and decision.candidate
            and decision.candidate.mean_nll is not None
        ):
            delta = f"{decision.candidate.mean_nll - e.mean_nll:+.4f}"
        rows.append(
            f"| {e.role} | `{e.model_id or 'unregistered'}` | `{Path(e.gguf_path).name}` | {nll} | "
            f"{delta} | {e.tokens} | {_cell(e.error or 'ok')} |"
        )
        answers += [
            f"| {e.role} | {_cell(a.prompt)} | {_cell(a.text)} | {a.degenerate or 'ok'} |"
            for a in e.answers
        ]
    table = ""
    if rows:
        table = (
            f"\nHeld-out rows: {decision.held_out_texts}; margin {decision.margin} nats/token.\n\n"
            "| model | registry entry | GGUF | mean NLL | candidate − this | tokens | note |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
        )
    if answers:
        table += (
            "\n## Answers to the quality prompts (greedy)\n| model | prompt | answer | check |\n"
            "|---|---|---|---|\n" + "\n".join(answers) + "\n"
        )
    verdict = "deploy" if decision.deploy else "keep (not deployed)"
    return f"# Promotion: {verdict}\n\n**{decision.reason}** (promotion: `{decision.promotion.value}`)\n{table}"


@task(name="publish-promotion-decision", timeout_seconds=120)
def publish_decision(decision: PromotionDecision) -> PromotionDecision:
    """The decision and its figures as the `promotion-decision` markdown artifact."""
    create_markdown_artifact(
        promotion_markdown(decision), key="promotion-decision", description=decision.reason[:500]
    )
    return decision


def gate_promotion(
    promotion: Promotion,
    margin: float,
    *,
    gguf: ConversionResult,
    texts: list[str],
    settings: GGUFSettings,
    incumbent: tuple[str | None, str] | None,
    base_model: str,
    base_name: str,
) -> PromotionDecision:
    """In a flow body: evaluate what `promotion` needs, decide, publish the decision.

    `incumbent` is (registry id, GGUF path) of what serves under the name now, or None.
    """
    if promotion is not Promotion.IF_BETTER:
        return publish_decision(decide_promotion(promotion, margin))
    if not texts:
        return publish_decision(
            decide_promotion(
                promotion,
                margin,
                candidate=ModelEvaluation(
                    role=CANDIDATE,
                    gguf_path=gguf.chosen,
                    error="no held-out rows to score it on (evaluation is off, or no row could be rendered)",
                ),
            )
        )
    candidate = evaluate_gguf(CANDIDATE, gguf.chosen, texts, settings, model_id=None)
    served = None
    if incumbent is not None:
        served = evaluate_gguf(INCUMBENT, incumbent[1], texts, settings, model_id=incumbent[0])
    base_file = base_gguf(base_model, base_name, gguf.quality.chosen_type, settings, texts)
    base = evaluate_gguf(BASE, base_file, texts, settings, model_id=None)
    return publish_decision(
        decide_promotion(
            promotion,
            margin,
            candidate=candidate,
            incumbent=served,
            base=base,
            held_out_texts=len(texts),
        )
    )


def promote_candidate(
    request: FineTuneRequest, base_model_dir: str, result: TrainingResult, gguf: ConversionResult
) -> PromotionDecision:
    """In the `finetune` flow: the promotion decision for the model it trained and converted.

    The incumbent is what serves under the request's deploy name on its target now; its GGUF
    is the file its registry entry chose (else the deployed file).
    """
    from tasks.gguf.held_out import held_out_dataset, held_out_split, select_held_out
    from tasks.registry import find_incumbent

    assert request.deploy is not None and request.gguf is not None and request.output_name
    if request.promotion is not Promotion.IF_BETTER:
        return publish_decision(decide_promotion(request.promotion, request.promotion_margin))
    found = find_incumbent(request.deploy.target, request.deploy.name or request.output_name)
    incumbent = None
    if found is not None:
        event, entry = found
        incumbent = (
            event.model_id,
            entry.gguf_path if entry and entry.gguf_path else event.gguf_path,
        )
    tokenizer_dir = result.model_dir or base_model_dir
    texts = select_held_out(held_out_dataset(request), tokenizer_dir, split=held_out_split(request))
    return gate_promotion(
        request.promotion,
        request.promotion_margin,
        gguf=gguf,
        texts=texts,
        settings=request.gguf,
        incumbent=incumbent,
        base_model=base_model_dir,
        base_name=gguf.artifacts.lineage.base_model,
    )
