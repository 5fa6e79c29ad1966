"""A held-out slice of the training data, rendered as the model saw it, for the quality gate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import task

from schemas.gguf import HeldOutSplit

if TYPE_CHECKING:  # schemas.request imports GGUFSettings from this package
    from schemas.request import DatasetSource, FineTuneRequest


def render_row(row: dict, tokenizer) -> str | None:
    """One dataset row as text: chat rows through the model's chat template, plain rows as they are."""

    def chat(messages: list[dict]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False)

    if isinstance(row.get("messages"), list):
        return chat(row["messages"])
    if isinstance(row.get("text"), str):
        return row["text"]
    prompt = row.get("prompt")
    answer = row.get("completion", row.get("chosen"))
    if isinstance(prompt, list) and isinstance(answer, list):
        return chat(prompt + answer)
    if isinstance(prompt, str) and isinstance(answer, str):
        return chat([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])
    return None


@task(name="select-held-out", retries=1, retry_delay_seconds=5, timeout_seconds=600)
def select_held_out(
    dataset: DatasetSource, model_dir: str, rows: int = 8, split: HeldOutSplit | None = None
) -> list[str]:
    """`rows` rows the model did not train on, rendered as text (empty when none can be rendered).

    With `split`, they come from the rows the training job held out for evaluation (the same
    `train_test_split` call as train.py's); without, `dataset` is the separate eval set (or,
    with evaluation off, its last rows are taken).
    """
    from itertools import islice

    from transformers import AutoTokenizer

    from tasks.validation import load_rows
    from training.train import eval_row_count  # the script's own rule: the same rows

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = load_rows(dataset)
    if hasattr(data, "num_rows"):
        held = eval_row_count(data.num_rows, split.ratio, split.max_rows) if split else 0
        if held and split is not None:
            data = data.train_test_split(test_size=held, shuffle=True, seed=split.seed)["test"]
            picked = data.select(range(min(rows, data.num_rows)))
        else:
            picked = data.select(range(max(0, data.num_rows - rows), data.num_rows))
    else:  # streaming Hub dataset: the first rows are the slice we can read without downloading it all
        picked = list(islice(data, rows))
    texts = [render_row(dict(row), tokenizer) for row in picked]
    return [t for t in texts if t]


def held_out_dataset(request: FineTuneRequest) -> DatasetSource:
    """Where the quality gate's rows come from: the separate eval set, else the training data."""
    evaluation = request.evaluation
    if evaluation is None or evaluation.eval_dataset is None:
        return request.dataset
    held_out = evaluation.eval_dataset
    if not held_out.column_map and request.dataset.column_map:  # as train.py reads it
        held_out = held_out.model_copy(update={"column_map": request.dataset.column_map})
    return held_out


def held_out_split(request: FineTuneRequest) -> HeldOutSplit | None:
    """The share of the training data the job held out (None: a separate eval set, or none)."""
    evaluation = request.evaluation
    if evaluation is None or evaluation.eval_dataset is not None or evaluation.eval_ratio <= 0:
        return None
    if request.method.value == "grpo":  # train.py holds nothing out for GRPO
        return None
    return HeldOutSplit(
        ratio=evaluation.eval_ratio,
        max_rows=evaluation.eval_max_rows,
        seed=request.hyperparameters.seed,
    )
