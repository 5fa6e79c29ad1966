"""The quality gate: a GGUF is not done until llama.cpp has loaded it and it answers.

Every variant is loaded with `llama_cpp.Llama`, chats through the template embedded in the
file, and scores a held-out slice of text (mean negative log-likelihood per token). A variant
fails when its NLL exceeds the f16 reference's by more than `max_nll_increase`, or when an
answer is degenerate: empty, endless repetition, or cut off before end-of-turn.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from pathlib import Path

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact

from schemas.gguf import Answer, GGUFSettings, GGUFVariant, QualityReport, VariantCheck
from tasks.caching import QUALITY_GATE_CACHE


def find_degeneration(text: str, finish_reason: str | None, max_tokens: int) -> str | None:
    """Why an answer is degenerate (empty, repetitive, never ends), or None when it looks sane."""
    if not text.strip():
        return "empty answer"
    words = text.split()
    for n in (1, 2, 3, 4):
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        if grams:
            gram, count = grams.most_common(1)[0]
            if count >= 4 and count * n >= 0.5 * len(words):
                return f"repeats {' '.join(gram)!r} {count} times"
    if finish_reason == "length":
        return f"no end-of-turn within {max_tokens} tokens"
    return None


def _log_softmax(scores: np.ndarray) -> np.ndarray:
    scores = scores.astype(np.float64)
    top = scores.max(axis=1, keepdims=True)
    return scores - top - np.log(np.exp(scores - top).sum(axis=1, keepdims=True))


def score_texts(llm, texts: list[str], context_length: int) -> tuple[float, int]:
    """Mean NLL per predicted token over `texts` (each truncated to the context), and the token count."""
    total, count = 0.0, 0
    for text in texts:
        tokens = llm.tokenize(text.encode(), add_bos=True, special=True)[:context_length]
        if len(tokens) < 2:
            continue
        llm.reset()
        llm.eval(tokens)
        logprobs = _log_softmax(np.asarray(llm.scores[: len(tokens) - 1]))
        total -= float(logprobs[np.arange(len(tokens) - 1), tokens[1:]].sum())
        count += len(tokens) - 1
    if count == 0:
        raise ValueError("held-out texts: none is longer than one token; give real training rows")
    return total / count, count


def render_chat(llm, messages: list[dict[str, str]]) -> str:
    """`messages` formatted by the chat template embedded in the GGUF (what the server will do)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ValueError(
            "the GGUF has no tokenizer.chat_template; convert a model whose tokenizer has one"
        )
    eos = llm.detokenize([llm.token_eos()], special=True).decode()
    bos = llm.detokenize([llm.token_bos()], special=True).decode() if llm.token_bos() >= 0 else ""
    return Jinja2ChatFormatter(
        template=template, eos_token=eos, bos_token=bos, add_generation_prompt=False
    )(messages=messages).prompt  # type: ignore[arg-type]  # plain dicts of the TypedDict's keys


def chat_answers(llm, prompts: list[str], max_tokens: int) -> tuple[list[Answer], float]:
    """Greedy answers to `prompts` through the file's chat template, and the tokens per second."""
    answers, tokens, seconds = [], 0, 0.0
    for prompt in prompts:
        started = time.monotonic()
        reply = llm.create_chat_completion(
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0.0,
            seed=0,
        )
        seconds += time.monotonic() - started
        choice = reply["choices"][0]
        text = choice["message"]["content"] or ""
        used = reply["usage"]["completion_tokens"]
        tokens += used
        answers.append(
            Answer(
                prompt=prompt,
                text=text,
                finish_reason=choice["finish_reason"],
                tokens=used,
                degenerate=find_degeneration(text, choice["finish_reason"], max_tokens),
            )
        )
    return answers, (tokens / seconds if seconds else 0.0)


def load_gguf(path: str, settings: GGUFSettings):
    """A GGUF loaded by llama-cpp-python as the quality gate scores it, and the seconds it took."""
    from llama_cpp import Llama

    started = time.monotonic()
    llm = Llama(
        model_path=path,
        n_ctx=max(settings.context_length, 2 * settings.max_answer_tokens + 256),
        logits_all=True,
        n_threads=settings.threads or None,
        seed=0,
        verbose=False,
    )
    return llm, time.monotonic() - started


def _check(
    variant: GGUFVariant,
    texts: list[str] | None,
    reference_nll: float | None,
    settings: GGUFSettings,
):
    llm, load_seconds = load_gguf(variant.path, settings)
    try:
        answers, speed = chat_answers(llm, settings.prompts, settings.max_answer_tokens)
        if texts is None:  # no held-out text: score the reference's own transcripts (built below)
            texts = [
                render_chat(
                    llm,
                    [
                        {"role": "user", "content": a.prompt},
                        {"role": "assistant", "content": a.text},
                    ],
                )
                for a in answers
            ]
        nll, n_tokens = score_texts(llm, texts, settings.context_length)
    finally:
        llm.close()
        del llm
        gc.collect()
    delta = 0.0 if reference_nll is None else nll - reference_nll
    reasons = [f"answer to {a.prompt!r}: {a.degenerate}" for a in answers if a.degenerate]
    if delta > settings.max_nll_increase:
        reasons.append(f"mean NLL rose by {delta:.4f} nats/token (> {settings.max_nll_increase})")
    check = VariantCheck(
        quant_type=variant.quant_type,
        path=variant.path,
        size_bytes=variant.size_bytes,
        load_seconds=round(load_seconds, 3),
        tokens_per_second=round(speed, 1),
        mean_nll=round(nll, 5),
        delta_nll=round(delta, 5),
        answers=answers,
        passed=not reasons,
        reasons=reasons,
    )
    return check, texts, n_tokens


def choose_variant(
    reference: VariantCheck, variants: list[VariantCheck], max_nll_increase: float
) -> tuple[VariantCheck, str]:
    """The smallest passing variant, else the reference; and one sentence saying why."""
    passing = sorted((v for v in variants if v.passed), key=lambda v: v.size_bytes)
    if passing:
        best = passing[0]
        decision = (
            f"Deploying {best.quant_type.value} ({best.size_bytes / 1e6:.0f} MB): the smallest variant that passed "
            f"(ΔNLL {best.delta_nll:+.4f} ≤ {max_nll_increase}, sane answers)."
        )
    else:
        best = reference
        failures = (
            "; ".join(f"{v.quant_type.value}: {v.reasons[0]}" for v in variants) or "none was built"
        )
        decision = f"Deploying the {reference.quant_type.value} reference: no quantized variant passed ({failures})."
    if not reference.passed:
        decision += f" Warning: the reference itself answers badly ({reference.reasons[0]})."
    return best, decision


@task(name="check-gguf-quality", cache_policy=QUALITY_GATE_CACHE, persist_result=True)
def check_gguf_quality(
    reference: GGUFVariant, variants: list[GGUFVariant], held_out: list[str], settings: GGUFSettings
) -> QualityReport:
    """Load every GGUF, chat with it, score held-out text against the reference; pick what to deploy."""
    texts = [t for t in held_out if t.strip()] or None
    ref_check, texts, n_tokens = _check(reference, texts, None, settings)
    checks = [_check(v, texts, ref_check.mean_nll, settings)[0] for v in variants]
    chosen, decision = choose_variant(ref_check, checks, settings.max_nll_increase)
    report = QualityReport(
        reference=ref_check,
        variants=checks,
        max_nll_increase=settings.max_nll_increase,
        held_out_texts=len(texts),
        held_out_tokens=n_tokens,
        chosen=chosen.path,
        chosen_type=chosen.quant_type,
        decision=decision,
    )
    create_markdown_artifact(
        quality_markdown(report), key="gguf-quality-report", description=decision
    )
    return report


def quality_markdown(report: QualityReport) -> str:
    """The report as a Prefect markdown artifact."""
    rows, answers = [], []
    for check in (report.reference, *report.variants):
        verdict = "pass" if check.passed else "**fail**: " + "; ".join(check.reasons)
        rows.append(
            f"| {check.quant_type.value} | {check.size_bytes / 1e6:.1f} | {check.load_seconds:.2f} | "
            f"{check.tokens_per_second:.1f} | {check.mean_nll:.4f} | {check.delta_nll:+.4f} | {verdict} |"
        )
        for answer in check.answers:
            text = answer.text.replace("|", "\\|").replace("\n", " ")[:300]
            answers.append(
                f"| {check.quant_type.value} | {answer.prompt} | {text} | {answer.degenerate or 'ok'} |"
            )
    return f"""# GGUF quality gate

**{report.decision}**

Chosen file: `{Path(report.chosen).name}`. Held-out slice: {report.held_out_texts} texts, {report.held_out_tokens} tokens;
a variant fails when its mean NLL exceeds the reference's by more than {report.max_nll_increase} nats/token
or when an answer is degenerate.

| variant | size (MB) | load (s) | tokens/s | mean NLL | ΔNLL | verdict |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

## Answers (greedy, through the embedded chat template)
| variant | prompt | answer | check |
|---|---|---|---|
{chr(10).join(answers)}
"""
