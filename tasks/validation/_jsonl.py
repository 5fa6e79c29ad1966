"""The JSONL fast path: a typed msgspec decode per line, on every core, in bounded memory.

The file is cut into byte ranges that end at newlines; each worker process reads one
range, decodes each line straight into typed structs whose constraints (known roles,
non-empty strings, non-negative weight, no unknown message keys) msgspec checks in C,
then checks blank content and the role sequence (through a small cache) in one pass. A line the typed decode refuses, or
whose shape it does not cover, goes to `check_row` (the reference rules), so the codes
and messages are the same on both paths. Results carry chunk-local line numbers that the
parent shifts, so row numbers are the file's exact 1-based line numbers.

`pyarrow.json` would parse faster per core but loads the whole file and cannot say which
line broke a rule; `datasets` goes through pyarrow too. That is why this is hand-written.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Annotated, Any, Literal

import msgspec
import orjson
import xxhash
from msgspec import UNSET, UnsetType

from schemas.validation import FormatKind, IssueCode
from tasks.validation._rules import (
    SIDES,
    RowIssue,
    check_row,
    detect_kind,
    main_column,
    sequence_issues,
)

CHUNK_BYTES = 4 * 1024 * 1024
"""Bytes read at a time (one range): bounds memory whatever the file size, and small enough
that its buffers are reused instead of being mapped afresh (page faults) for every range."""

TASK_RANGES = 8
"""Ranges per worker task at most."""

PARALLEL_MIN_BYTES = 8 * 1024 * 1024
"""Smaller files are checked in this process: starting workers would cost more than it saves."""

KEEP_PER_CODE = 20
"""Issues kept (with row numbers) per code; all are counted."""

BOM = b"\xef\xbb\xbf"

# Blank-only strings are refused after the decode (`str.isspace` is much cheaper than a
# msgspec `pattern`, which calls the regex engine once per string).
_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
_Role = Literal["system", "user", "assistant", "tool", "developer"]
_Weight = Annotated[float, msgspec.Meta(ge=0)]


class _Message(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    role: _Role
    content: _NonEmpty


class _MessagesRow(msgspec.Struct, gc=False):
    """A row with `messages`: by TRL's precedence its other columns, but `weight`, do not matter."""

    messages: list[_Message]
    weight: _Weight | UnsetType = UNSET


_Side = _NonEmpty | list[_Message] | UnsetType

_TYPED_COLUMNS: dict[str, Any] = {
    "messages": list[_Message] | UnsetType,
    "text": _NonEmpty | UnsetType,
    "prompt": _Side,
    "completion": _Side,
    "chosen": _Side,
    "rejected": _Side,
    "label": bool | UnsetType,
    "weight": _Weight | UnsetType,
    # Shapes the fast path leaves to the reference rules: any value sends the row there.
    "completions": msgspec.Raw | UnsetType,
    "labels": msgspec.Raw | UnsetType,
    "conversations": msgspec.Raw | UnsetType,
}
_BITS = {
    "messages": 1,
    "text": 2,
    "prompt": 4,
    "completion": 8,
    "chosen": 16,
    "rejected": 32,
    "label": 64,
}
_KIND_BY_MASK: dict[int, FormatKind | None] = {
    mask: detect_kind({c for c, bit in _BITS.items() if mask & bit}) for mask in range(128)
}

_decoders: dict[tuple, msgspec.json.Decoder] = {}


def _decoder(column_map: dict[str, str], messages_only: bool) -> msgspec.json.Decoder:
    """A typed row decoder; `column_map` (source → TRL name) becomes the JSON field names."""
    key = (tuple(sorted(column_map.items())), messages_only)
    if key not in _decoders:
        if messages_only and not column_map:
            _decoders[key] = msgspec.json.Decoder(_MessagesRow)
        else:
            source = {target: name for name, target in column_map.items()}
            # A column renamed away no longer exists under its own name: its field gets a
            # name no dataset column has.
            fields = [
                (
                    col,
                    typ,
                    msgspec.field(
                        default=UNSET,
                        name=source.get(
                            col, f"lmft: {col} renamed away" if col in column_map else col
                        ),
                    ),
                )
                for col, typ in _TYPED_COLUMNS.items()
            ]
            _decoders[key] = msgspec.json.Decoder(msgspec.defstruct("Row", fields))
    return _decoders[key]


FormatId = tuple[FormatKind, bool]


@dataclass
class ChunkResult:
    """What one range of lines holds; line numbers are local (1 = the range's first line)."""

    lines: int = 0
    rows: int = 0
    issues: list[tuple[int, IssueCode, str | None, str]] = field(default_factory=list)
    counts: dict[IssueCode, int] = field(default_factory=dict)
    formats: dict[FormatId, int] = field(default_factory=dict)
    first_rows: dict[FormatId | None, list[int]] = field(default_factory=dict)
    labels: list[int] = field(default_factory=lambda: [0, 0, 0])  # true, false, other
    hashes: array = field(default_factory=lambda: array("Q"))
    hash_lines: array = field(default_factory=lambda: array("Q"))

    def add_issue(self, line: int, code: IssueCode, column: str | None, message: str) -> None:
        seen = self.counts.get(code, 0)
        self.counts[code] = seen + 1
        if seen < KEEP_PER_CODE:
            self.issues.append((line, code, column, message))

    def add_format(self, line: int, fmt: FormatId | None) -> None:
        if fmt is not None:
            self.formats[fmt] = self.formats.get(fmt, 0) + 1
        kept = self.first_rows.setdefault(fmt, [])
        if len(kept) < KEEP_PER_CODE:
            kept.append(line)


_CONVERSATION = (FormatKind.LANGUAGE_MODELING, True)


def _blank(value: Any) -> bool:
    return (
        value.isspace()
        if isinstance(value, str)
        else (not value or any([m.content.isspace() for m in value]))
    )


def _fast_row(row: Any) -> tuple[FormatId, tuple[RowIssue, ...], Any] | None:
    """Check a typed row of any shape; None when the reference rules must look at it."""
    if row.messages is not UNSET:
        messages = row.messages
        if not messages or any([m.content.isspace() for m in messages]):
            return None
        return (
            _CONVERSATION,
            sequence_issues(tuple([m.role for m in messages]), "messages", True, False),
            None,
        )
    if row.completions is not UNSET or row.labels is not UNSET or row.conversations is not UNSET:
        return None
    mask = (
        (row.text is not UNSET) << 1
        | (row.prompt is not UNSET) << 2
        | (row.completion is not UNSET) << 3
        | (row.chosen is not UNSET) << 4
        | (row.rejected is not UNSET) << 5
        | (row.label is not UNSET) << 6
    )
    kind = _KIND_BY_MASK[mask]
    if kind is None:
        return None
    if kind is FormatKind.LANGUAGE_MODELING:
        return None if row.text.isspace() else ((kind, False), (), None)
    main = main_column(kind, frozenset(c for c, bit in _BITS.items() if mask & bit))
    conversational = isinstance(getattr(row, main), list)
    found: tuple[RowIssue, ...] = ()
    for column, need_assistant, end_assistant in SIDES[kind]:
        value = getattr(row, column)
        if isinstance(value, list) is not conversational or _blank(value):
            return None
        if conversational:
            found += sequence_issues(
                tuple([m.role for m in value]), column, need_assistant, end_assistant
            )
    if (
        kind in (FormatKind.PREFERENCE_EXPLICIT, FormatKind.PREFERENCE_IMPLICIT)
        and row.chosen == row.rejected
    ):
        return None
    return (kind, conversational), found, row.label


def _slow_line(line: bytes, column_map: dict[str, str], sharegpt: bool):
    """Decode and check one line with the reference rules; None for a blank line."""
    stripped = line.strip()
    if not stripped:
        return None
    try:
        row = orjson.loads(stripped)
    except orjson.JSONDecodeError as exc:
        try:
            text = stripped.decode("utf-8")
        except UnicodeDecodeError as bad:
            return (
                None,
                [
                    (
                        IssueCode.INVALID_UTF8,
                        None,
                        f"byte {stripped[bad.start]:#04x} at column {bad.start + 1} is not valid UTF-8; "
                        "re-encode the file as UTF-8",
                    )
                ],
                None,
            )
        try:
            # The standard library accepts what orjson refuses on purpose (integers wider
            # than 64 bits, NaN): such a row is still a JSON object the trainer can read.
            row = json.loads(text)
        except (ValueError, RecursionError):
            return (
                None,
                [(IssueCode.NOT_JSON, None, f"not valid JSON: {exc.msg} at column {exc.colno}")],
                None,
            )
    if column_map and isinstance(row, dict):
        row = {column_map.get(k, k): v for k, v in row.items()}
    fmt, issues = check_row(row, sharegpt_messages=sharegpt)
    return fmt, issues, row.get("label") if isinstance(row, dict) else None


_REFER: tuple[RowIssue, ...] = ((IssueCode.NOT_JSON, None, "refer to the reference rules"),)
"""Marks, in the role-sequence cache, rows the fast loop leaves to the reference rules."""


def _conversation_keys(lines: list[bytes]) -> list[tuple[str | None, ...] | None]:
    """Each line's role sequence (None for a message with blank content), or None for a
    line the typed decode refuses. Rows are decoded and dropped one at a time: keeping them
    all alive doubles the cost of decoding."""
    decode = _decoder({}, True).decode
    typed_errors = (msgspec.ValidationError, msgspec.DecodeError)
    keys: list[tuple[str | None, ...] | None] = []
    append = keys.append
    remaining: Iterable[bytes] = lines
    while True:
        try:
            for line in remaining:
                append(
                    tuple([None if m.content.isspace() else m.role for m in decode(line).messages])
                )
            return keys
        except typed_errors:
            append(None)
            remaining = islice(lines, len(keys), None)


def _check_conversations(
    lines: list[bytes], result: ChunkResult, other: Callable[[int, bytes], None]
) -> None:
    """The loop over `messages` rows: it is the whole cost of validating a big file, so it
    is written flat. Rows it is not sure about go to `other` (the general path)."""
    keys = _conversation_keys(lines)
    # Role sequence → its issues (there are few distinct sequences).
    sequences = {
        key: _REFER
        if key is None or not key or None in key
        else sequence_issues(key, "messages", True, False)
        for key in set(keys)
    }
    hash_line = xxhash.xxh3_64_intdigest
    if not any(sequences.values()):
        # Every row is a clean conversation: hash them all in one pass.
        result.hashes = array("Q", map(hash_line, lines))
        result.hash_lines = array("Q", range(1, len(lines) + 1))
        referred_hashed: set[int] = set()
    else:
        add_hash, add_hash_line = result.hashes.append, result.hash_lines.append
        referred_hashed = set()  # rows `other` checked and hashed
        for number, (line, key) in enumerate(zip(lines, keys, strict=True), start=1):
            issues = sequences[key]
            if issues is _REFER:
                hashed = len(result.hashes)
                other(number, line)
                if len(result.hashes) > hashed:
                    referred_hashed.add(number)
                continue
            add_hash(hash_line(line))
            add_hash_line(number)
            if issues:
                for code, column, message in issues:
                    result.add_issue(number, code, column, message)
    conversations = len(result.hashes) - len(referred_hashed)
    if conversations:
        result.rows += conversations
        result.formats[_CONVERSATION] = result.formats.get(_CONVERSATION, 0) + conversations
        kept = result.first_rows.get(_CONVERSATION, [])
        fast_rows = islice(
            (n for n in result.hash_lines if n not in referred_hashed), KEEP_PER_CODE
        )
        result.first_rows[_CONVERSATION] = sorted(kept + list(fast_rows))[:KEEP_PER_CODE]


def check_lines(
    lines: list[bytes], column_map: dict[str, str], *, file_start: bool, messages_only: bool = False
) -> ChunkResult:
    """Check JSONL lines (without their newline); `file_start` when the first is the file's first.

    `messages_only` (most rows have `messages`) runs the loop specialised for them first.
    """
    result = ChunkResult()
    if file_start and lines and lines[0].startswith(BOM):
        lines[0] = lines[0][len(BOM) :]
    decode = _decoder(column_map, False).decode
    sharegpt = column_map.get("conversations") == "messages"
    typed_errors = (msgspec.ValidationError, msgspec.DecodeError)
    formats, labels = result.formats, result.labels

    def other(number: int, line: bytes) -> None:
        checked = None
        if line:
            try:
                checked = _fast_row(decode(line))
            except typed_errors:
                checked = None
        if checked is None:
            checked = _slow_line(line, column_map, sharegpt)
            if checked is None:
                return
        fmt, issues, label = checked
        result.rows += 1
        if fmt is None:
            result.add_format(number, None)
        else:
            seen = formats.get(fmt, 0)
            formats[fmt] = seen + 1
            if seen < KEEP_PER_CODE:
                result.first_rows.setdefault(fmt, []).append(number)
            result.hashes.append(xxhash.xxh3_64_intdigest(line))
            result.hash_lines.append(number)
            if label is not None:
                labels[0 if label is True else 1 if label is False else 2] += 1
        for code, column, message in issues:
            result.add_issue(number, code, column, message)

    if messages_only and not column_map:
        _check_conversations(lines, result, other)
    else:
        for number, line in enumerate(lines, start=1):
            other(number, line)
    result.lines = len(lines)
    return result


def _check_range(
    path: str, start: int, end: int, column_map: dict[str, str], messages_only: bool
) -> ChunkResult:
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(end - start)
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    del data
    return check_lines(lines, column_map, file_start=start == 0, messages_only=messages_only)


def _check_ranges(
    task: tuple[str, list[tuple[int, int]], dict[str, str], bool],
) -> list[ChunkResult]:
    """A worker task: check consecutive ranges one by one (each range's lines are dropped
    before the next is read, so memory stays small), returned in one message."""
    path, ranges, column_map, messages_only = task
    return [_check_range(path, start, end, column_map, messages_only) for start, end in ranges]


def _groups(ranges: list[tuple[int, int]], workers: int) -> list[list[tuple[int, int]]]:
    """Ranges grouped into worker tasks: up to TASK_RANGES per task while much is left, fewer
    towards the end so that the workers finish together (every task costs the parent a
    message, so tasks are as few as the balance allows)."""
    groups = []
    taken = 0
    while taken < len(ranges):
        size = max(1, min(TASK_RANGES, (len(ranges) - taken) // (4 * workers)))
        groups.append(ranges[taken : taken + size])
        taken += size
    return groups


def _ranges(path: str, size: int, chunk: int) -> list[tuple[int, int]]:
    """Byte ranges of about `chunk` bytes, each starting at a line start."""
    cuts = [0]
    with open(path, "rb") as handle:
        for offset in range(chunk, size, chunk):
            if offset <= cuts[-1]:
                continue
            handle.seek(offset - 1)
            handle.readline()
            position = handle.tell()
            if position < size and position > cuts[-1]:
                cuts.append(position)
    cuts.append(size)
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def sniff_jsonl(path: str, rows: int = 1000) -> tuple[list[str], bool]:
    """The columns of the first `rows` rows, and whether most of them have `messages`."""
    opener = gzip.open if path.endswith(".gz") else open
    columns: dict[str, None] = {}
    with_messages = seen = 0
    with opener(path, "rb") as handle:
        for line in handle:
            try:
                row = orjson.loads(line.removeprefix(BOM))
            except orjson.JSONDecodeError:
                continue
            if not isinstance(row, dict):
                continue
            columns.update(dict.fromkeys(row))
            with_messages += "messages" in row
            seen += 1
            if seen >= rows:
                break
    return list(columns), with_messages * 2 > seen


def scan_jsonl(
    path: str,
    column_map: dict[str, str],
    *,
    messages_only: bool = False,
    workers: int | None = None,
) -> Iterator[ChunkResult]:
    """Check a JSONL file (or .jsonl.gz) range by range, in file order."""
    if path.endswith(".gz"):
        # A gzip stream cannot be cut into ranges: read it in one process, block by block.
        with gzip.open(path, "rb") as handle:
            file_start = True
            while block := handle.readlines(CHUNK_BYTES):
                lines = [line.rstrip(b"\n") for line in block]
                yield check_lines(
                    lines, column_map, file_start=file_start, messages_only=messages_only
                )
                file_start = False
            return
    size = os.path.getsize(path)
    ranges = _ranges(path, size, CHUNK_BYTES)
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    workers = workers or min(cores, len(ranges))
    if size < PARALLEL_MIN_BYTES or workers < 2:
        for start, end in ranges:
            yield _check_range(path, start, end, column_map, messages_only)
        return
    tasks = [(path, group, column_map, messages_only) for group in _groups(ranges, workers)]
    # fork: the workers inherit the loaded modules, so they start in milliseconds; they
    # only run msgspec/orjson decoding and take no locks the parent may hold.
    context = multiprocessing.get_context("fork")
    with context.Pool(workers) as pool:
        for results in pool.imap(_check_ranges, tasks):
            yield from results
        pool.close()
        pool.join()
