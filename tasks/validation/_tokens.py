"""Token lengths of the rows, with the base model's tokenizer and chat template, in batches."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Any

from schemas.validation import FormatKind, TokenStats

BATCH_ROWS = 1000
_RENDER_ERRORS: tuple[type[Exception], ...] = (KeyError, TypeError, ValueError, AttributeError)
TOKEN_ROWS = 100_000
"""Rows tokenised at most; beyond, the totals are extrapolated (and `TokenStats.exact` is false)."""


@lru_cache(maxsize=4)
def load_tokenizer(base_model: str, tokenizer_path: str | None) -> tuple[Any | None, str]:
    """The tokenizer of the model (`tokenizer_path` if given, else `base_model`): a local folder,
    or a Hub model's tokenizer files (never its weights); else (None, why not)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None, "transformers is not installed (pip install 'lm-fine-tuning[training]')"

    from schemas.request import DEFAULT_BASE_MODEL
    from tasks.jobs.base_model import EMBEDDED_HUB_ID, embedded_gguf_path

    model = tokenizer_path or base_model
    if model in (DEFAULT_BASE_MODEL, EMBEDDED_HUB_ID):
        try:
            gguf = embedded_gguf_path()
        except RuntimeError as exc:
            return None, str(exc)
        return AutoTokenizer.from_pretrained(
            gguf.parent, gguf_file=gguf.name
        ), f"{DEFAULT_BASE_MODEL} (embedded GGUF)"
    folder = Path(model).expanduser()
    try:
        if folder.is_dir():
            return AutoTokenizer.from_pretrained(folder), model
        return AutoTokenizer.from_pretrained(_tokenizer_files(model)), model
    except (OSError, ValueError) as exc:
        return None, f"the tokenizer of {model} could not be read ({str(exc).splitlines()[0]})"


_TOKENIZER_FILES = [
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "*.model",
    "chat_template.*",
    "config.json",
]


def _tokenizer_files(repo_id: str) -> str:
    """The tokenizer files of a Hub model (a few MB, no weights), through the run's Hub client,
    so a private or gated base model is read with the same token and endpoint as the rest of
    the run; offline, whatever the local cache holds."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if constants.HF_HUB_OFFLINE:
        try:
            return snapshot_download(
                repo_id, allow_patterns=_TOKENIZER_FILES, local_files_only=True
            )
        except LocalEntryNotFoundError as exc:
            raise OSError(f"offline and not in the Hugging Face cache: {exc}") from None
    from blocks.huggingface import hub_api

    api = hub_api()
    try:
        return snapshot_download(
            repo_id, allow_patterns=_TOKENIZER_FILES, token=api.token, endpoint=api.endpoint
        )
    except Exception as exc:  # 401/404/network: validation goes on without token counts
        raise OSError(f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def _join(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(m.get("content") or "") for m in value if isinstance(m, dict))
    return str(value or "")


def _texts(
    rows: list[dict], kind: FormatKind, conversational: bool, tokenizer: Any, templated: bool
) -> list[list[str]]:
    """For each row, the strings whose token counts make its length (the longest counts)."""

    def render(conversations: list[list[dict]]) -> list[str]:
        if templated:
            return tokenizer.apply_chat_template(conversations, tokenize=False)
        return [_join(conv) for conv in conversations]

    if kind is FormatKind.LANGUAGE_MODELING:
        if conversational:
            return [[t] for t in render([r["messages"] for r in rows])]
        return [[r["text"]] for r in rows]
    sides = [s for s in ("completion", "chosen", "rejected") if s in rows[0]] or [None]
    columns: list[list[str]] = []
    for side in sides:
        if conversational:
            columns.append(
                render(
                    [list(r.get("prompt") or []) + (list(r[side]) if side else []) for r in rows]
                )
            )
        else:
            columns.append(
                [str(r.get("prompt") or "") + (str(r[side]) if side else "") for r in rows]
            )
    return [list(parts) for parts in zip(*columns, strict=True)]


def count_tokens(
    rows: Iterable[tuple[Any, dict]],
    *,
    kind: FormatKind,
    conversational: bool,
    tokenizer: Any,
    tokenizer_name: str,
    max_length: int,
    row_count: int,
    limit: int = TOKEN_ROWS,
) -> tuple[TokenStats, list[Any]]:
    """Token statistics of the first `limit` rows, and where (the rows' keys) rows exceed `max_length`."""
    from jinja2 import TemplateError

    render_errors = (*_RENDER_ERRORS, TemplateError)
    templated = conversational and bool(getattr(tokenizer, "chat_template", None))
    lengths: list[int] = []
    too_long: list[Any] = []
    started = time.perf_counter()
    iterator: Iterator[tuple[Any, dict]] = islice(rows, limit)
    while batch := list(islice(iterator, BATCH_ROWS)):
        try:
            texts = _texts([r for _, r in batch], kind, conversational, tokenizer, templated)
        except render_errors:
            # A malformed row in the batch (already reported by the structural check):
            # count the rows one by one and skip the ones that cannot be rendered.
            texts = []
            kept = []
            for number, row in batch:
                try:
                    texts += _texts([row], kind, conversational, tokenizer, templated)
                    kept.append((number, row))
                except render_errors:
                    continue
            batch = kept
        if not texts:
            continue
        flat = [t for parts in texts for t in parts]
        ids = tokenizer(flat, add_special_tokens=not templated)["input_ids"]
        position = 0
        for (number, _), parts in zip(batch, texts, strict=True):
            length = max(len(i) for i in ids[position : position + len(parts)])
            position += len(parts)
            lengths.append(length)
            if length > max_length:
                too_long.append(number)
    seconds = time.perf_counter() - started
    counted = len(lengths)
    ordered = sorted(lengths)
    total = sum(lengths)
    exact = counted >= row_count
    stats = TokenStats(
        rows=counted,
        total_tokens=total if exact or not counted else round(total / counted * row_count),
        mean_tokens=round(total / counted, 1) if counted else 0.0,
        max_tokens=ordered[-1] if ordered else 0,
        p95_tokens=ordered[min(counted - 1, int(counted * 0.95))] if ordered else 0,
        over_max_length=len(too_long),
        max_length=max_length,
        exact=exact,
        tokenizer=tokenizer_name,
        chat_template=templated,
        rows_per_second=round(counted / seconds, 1) if seconds > 0 else 0.0,
    )
    return stats, too_long
