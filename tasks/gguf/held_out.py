"""A held-out slice of the training data, rendered as the model saw it, for the quality gate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import task

if TYPE_CHECKING:  # schemas.request imports GGUFSettings from this package
    from schemas.request import DatasetSource


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
def select_held_out(dataset: DatasetSource, model_dir: str, rows: int = 8) -> list[str]:
    """The last `rows` rows of the dataset rendered as text (empty when none can be rendered)."""
    from itertools import islice

    from transformers import AutoTokenizer

    from tasks.validation import load_rows

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = load_rows(dataset)
    if hasattr(data, "num_rows"):
        picked = data.select(range(max(0, data.num_rows - rows), data.num_rows))
    else:  # streaming Hub dataset: the first rows are the slice we can read without downloading it all
        picked = list(islice(data, rows))
    texts = [render_row(dict(row), tokenizer) for row in picked]
    return [t for t in texts if t]
