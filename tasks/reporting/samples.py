"""Answers of the base and the fine-tuned model to the same prompts, side by side."""

from __future__ import annotations

from typing import cast

from prefect import task
from pydantic import BaseModel

DEFAULT_PROMPTS = ("What is the capital of France?", "Give me one tip for sleeping better.")


class SampleAnswer(BaseModel):
    """One prompt, answered greedily by the base and by the fine-tuned model."""

    prompt: str
    base: str
    tuned: str


def generate_answers(model_dir: str, prompts: list[str], *, max_new_tokens: int = 48) -> list[str]:
    """Greedy chat answers of the checkpoint in `model_dir`, through its chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BatchEncoding

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    answers = []
    for prompt in prompts:
        inputs = cast(  # return_dict=True: a BatchEncoding, whatever the union in its signature
            BatchEncoding,
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            ),
        )
        with torch.no_grad():
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        text = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        answers.append(str(text).strip())  # one sequence decodes to one str
    return answers


@task(name="sample-answers")
def sample_answers(
    base_model_dir: str, tuned_model_dir: str, prompts: list[str] | None = None
) -> list[SampleAnswer]:
    """Ask the base and the fine-tuned model the same questions, to see what training changed."""
    prompts = list(prompts or DEFAULT_PROMPTS)
    base = generate_answers(base_model_dir, prompts)
    tuned = generate_answers(tuned_model_dir, prompts)
    return [
        SampleAnswer(prompt=p, base=b, tuned=t)
        for p, b, t in zip(prompts, base, tuned, strict=True)
    ]
