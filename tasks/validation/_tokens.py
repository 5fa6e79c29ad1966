"""Token lengths of the rows, with the base model's tokenizer and chat template, in batches."""

from __future__ import annotations

import os
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


def longest_token_chars(tokenizer: Any) -> int:
    """Characters (bytes, for byte-level BPE) the longest entry of the vocabulary covers.

    No token covers more of a text than this, so a text of `n` characters is at least
    `n / longest_token_chars` tokens long: that bounds a row without tokenising it.
    """
    vocab = tokenizer.get_vocab()
    return max((len(token) for token in vocab), default=1) or 1


TEXT_COLUMNS = ("messages", "text", "prompt", "completion", "chosen", "rejected")


def row_chars(row: dict) -> int:
    """Characters of the text that training renders from a row (message contents and text columns)."""

    def chars(value: Any) -> int:
        if isinstance(value, str):
            return len(value)
        if isinstance(value, list):
            return sum(
                len(m["content"])
                for m in value
                if isinstance(m, dict) and isinstance(m.get("content"), str)
            )
        return 0

    return sum(chars(row.get(column)) for column in TEXT_COLUMNS)


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
            embedded_gguf_path()
            folder = embedded_tokenizer_dir()
        except RuntimeError as exc:
            return None, str(exc)
        return AutoTokenizer.from_pretrained(folder), f"{DEFAULT_BASE_MODEL} (embedded GGUF)"
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


def embedded_tokenizer_dir() -> Path:
    """The embedded model's tokenizer as a tokenizer folder, extracted from its GGUF once.

    Reading the tokenizer out of the GGUF makes transformers parse the whole file (about 550 MB
    of memory that stays with the process), so it is done once, in a child process, and the
    folder (`$LMFT_HOME/models/<name>-tokenizer`) is loaded from then on.
    """
    import subprocess
    import sys

    from schemas.request import DEFAULT_BASE_MODEL
    from tasks.paths import models_dir

    for folder in (
        models_dir() / DEFAULT_BASE_MODEL,
        models_dir() / f"{DEFAULT_BASE_MODEL}-tokenizer",
    ):
        if (folder / "tokenizer_config.json").exists():  # materialised model, or extracted before
            return folder
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    extract = (
        "import sys\n"
        "from transformers import AutoTokenizer\n"
        "from tasks.jobs.base_model import embedded_gguf_path\n"
        "gguf = embedded_gguf_path()\n"
        "AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(sys.argv[1])\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", extract, str(partial)], cwd=root, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"could not extract the embedded model's tokenizer: {result.stderr.strip()[-500:]}"
        )
    try:
        partial.replace(folder)
    except OSError:  # another process extracted it first
        if not (folder / "tokenizer_config.json").exists():
            raise
    return folder


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
    """Token statistics of the first `limit` rows, and the rows longer than `max_length`.

    Each long row is `(key, chars)`: `chars` is None for a tokenised row, else the characters of
    a row counted as too long without tokenising it.

    Memory stays bounded whatever the rows hold: a row with more characters than `max_length`
    tokens can cover (`max_length × longest_token_chars`) is longer than `max_length` for sure; it
    is counted as such with its lower-bound length, without being rendered or tokenised, and
    `TokenStats.over_bound` says how many were.
    """
    from jinja2 import TemplateError

    render_errors = (*_RENDER_ERRORS, TemplateError)
    templated = conversational and bool(getattr(tokenizer, "chat_template", None))
    per_token = longest_token_chars(tokenizer)
    bound = max_length * per_token
    lengths: list[int] = []
    too_long: list[Any] = []
    over_bound = 0
    started = time.perf_counter()
    iterator: Iterator[tuple[Any, dict]] = islice(rows, limit)
    while batch := list(islice(iterator, BATCH_ROWS)):
        kept_rows = []
        for number, row in batch:
            chars = row_chars(row)
            if chars > bound:
                lengths.append(-(-chars // per_token))  # at least this many tokens
                too_long.append((number, chars))
                over_bound += 1
            else:
                kept_rows.append((number, row))
        batch = kept_rows
        if not batch:
            continue
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
                too_long.append((number, None))
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
        over_bound=over_bound,
        bound_chars=bound,
    )
    return stats, too_long
