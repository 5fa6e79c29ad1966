"""`check_dataset`: read the source, merge the checked chunks, decide, and count tokens."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from itertools import chain
from typing import Any

import numpy as np

from schemas.request import FineTuneRequest, Method
from schemas.validation import (
    SUITABLE_METHODS,
    WARNING_CODES,
    FormatKind,
    IssueCode,
    Severity,
    ValidationIssue,
    ValidationReport,
)
from tasks.validation._jsonl import KEEP_PER_CODE, ChunkResult, FormatId
from tasks.validation._rules import detect_kind, propose_column_map
from tasks.validation._sources import (
    DataFile,
    SourceError,
    check_rows,
    hub_rows,
    iter_file_rows,
    iter_hub_rows,
    local_files,
    open_hub,
    scan_file,
)
from tasks.validation._tokens import TOKEN_ROWS, count_tokens, load_tokenizer

DUPLICATE_ROWS_LIMIT = 30_000_000
"""Rows compared for duplicates (12 bytes each kept): bounds memory on the largest files."""

DEFAULT_MIN_ROWS = 10
"""Fewer rows than this is an error: too little to learn from, and usually a wrong file."""


def describe_format(fmt: FormatId) -> str:
    kind, conversational = fmt
    return f"{'conversational' if conversational else 'standard'} {kind.value}"


class _Totals:
    """Chunks merged in dataset order, with row numbers made global (per file)."""

    def __init__(self) -> None:
        self.rows = 0
        self.issues: list[ValidationIssue] = []
        self.counts: Counter[IssueCode] = Counter()
        self.formats: Counter[FormatId] = Counter()
        self.first_rows: dict[FormatId | None, list[tuple[str | None, int]]] = {}
        self.labels = [0, 0, 0]
        # Duplicate detection keeps 12 bytes per row: a 64-bit hash of the row and its row number.
        self.hashes: list[np.ndarray] = []
        self.hash_rows: list[tuple[np.ndarray, int]] = []  # (row numbers, file index) per chunk
        self.hashed = 0
        self.files: list[str | None] = []

    def add_issue(self, issue: ValidationIssue, count: int = 1) -> None:
        kept = self.counts[issue.code]
        self.counts[issue.code] += count
        if kept < KEEP_PER_CODE:
            self.issues.append(issue)

    def merge(self, chunks: Iterator[ChunkResult], file: str | None) -> int:
        """Add one file's chunks; return its row count."""
        file_index = len(self.files)
        self.files.append(file)
        offset = rows = 0
        for chunk in chunks:
            rows += chunk.rows
            for line, code, column, message in chunk.issues:
                if self.counts[code] < KEEP_PER_CODE:
                    self.issues.append(
                        ValidationIssue(
                            code=code, message=message, row=offset + line, column=column, file=file
                        )
                    )
            self.counts.update(chunk.counts)
            self.formats.update(chunk.formats)
            for fmt, lines in chunk.first_rows.items():
                kept = self.first_rows.setdefault(fmt, [])
                kept.extend((file, offset + line) for line in lines[: KEEP_PER_CODE - len(kept)])
            self.labels = [a + b for a, b in zip(self.labels, chunk.labels, strict=True)]
            if len(chunk.hashes) and self.hashed < DUPLICATE_ROWS_LIMIT:
                self.hashes.append(np.frombuffer(chunk.hashes, dtype=np.uint64))
                rows_here = np.frombuffer(chunk.hash_lines, dtype=np.uint64) + offset
                self.hash_rows.append(
                    (
                        rows_here.astype(np.uint32 if offset + chunk.lines < 2**32 else np.uint64),
                        file_index,
                    )
                )
                self.hashed += len(chunk.hashes)
            offset += chunk.lines
        self.rows += rows
        return rows

    def duplicates(self) -> tuple[int, list[tuple[int, int, int, int]]]:
        """How many rows repeat an earlier row, and the first few as (file, row, first file, first row).

        Memory: one sorted copy of the hashes and a mask, about 10 bytes per row, for a moment.
        """
        if not self.hashes:
            return 0, []
        hashes = np.concatenate(self.hashes)
        self.hashes = [hashes]
        ordered = np.sort(hashes)
        same = ordered[1:] == ordered[:-1]
        repeated = int(same.sum())
        if not repeated:
            return 0, []
        values = np.unique(ordered[1:][same])
        del ordered, same
        positions = np.flatnonzero(np.isin(hashes, values))
        starts = np.cumsum([0] + [len(rows) for rows, _ in self.hash_rows])
        first_seen: dict[int, tuple[int, int]] = {}
        found: list[tuple[int, int, int, int]] = []
        for position in positions.tolist():
            chunk = int(np.searchsorted(starts, position, side="right")) - 1
            rows, file_index = self.hash_rows[chunk]
            where = (file_index, int(rows[position - starts[chunk]]))
            value = int(hashes[position])
            if value in first_seen:
                found.append((*where, *first_seen[value]))
                if len(found) == KEEP_PER_CODE:
                    break
            else:
                first_seen[value] = where
        return repeated, found


def _issue(code: IssueCode, message: str, **where: Any) -> ValidationIssue:
    return ValidationIssue(code=code, message=message, **where)


def _scan_local(request: FineTuneRequest, totals: _Totals) -> tuple[list[str], list[DataFile]]:
    column_map = request.dataset.column_map
    files = local_files(request.dataset)
    columns: dict[str, None] = {}
    for data in files:
        file = data.name if len(files) > 1 else None
        try:
            names, chunks = scan_file(data, column_map)
            rows = totals.merge(chunks, file)
        except SourceError as exc:
            totals.add_issue(_issue(exc.code, str(exc), file=data.name))
            continue
        columns.update(dict.fromkeys(names))
        if rows == 0:
            totals.add_issue(_issue(IssueCode.EMPTY_FILE, "the file holds no rows", file=data.name))
    return list(columns), files


def _scan_hub(request: FineTuneRequest, totals: _Totals) -> tuple[list[str], Any]:
    dataset = open_hub(request.dataset)
    columns = list(getattr(dataset, "column_names", None) or [])
    totals.merge(check_rows(hub_rows(dataset), request.dataset.column_map), None)
    return columns, dataset


def _decide_format(
    request: FineTuneRequest, report: ValidationReport, totals: _Totals, raw_columns: list[str]
) -> None:
    """Majority format, mixed rows, suitability for the method, a proposed column map."""
    column_map = request.dataset.column_map
    mapped = {column_map.get(c, c) for c in raw_columns}
    for name in column_map:
        if raw_columns and name not in raw_columns:
            totals.add_issue(
                _issue(
                    IssueCode.COLUMN_MAP_UNKNOWN_COLUMN,
                    f"column_map renames {name!r}, but the dataset has no such column "
                    f"(columns: {', '.join(raw_columns)})",
                    column=name,
                )
            )
    if not totals.formats:
        if totals.rows:
            # Not one row has a recognised format: one dataset-level error, not one per row.
            totals.issues = [
                i
                for i in totals.issues
                if not (i.code is IssueCode.MISSING_COLUMNS and i.column is None)
            ]
            totals.counts.pop(IssueCode.MISSING_COLUMNS, None)
            _propose(request, report, totals, mapped, None)
        return
    fmt, count = totals.formats.most_common(1)[0]
    kind, conversational = fmt
    report.format_kind, report.conversational = kind, conversational
    report.detected_format = describe_format(fmt)
    report.suitable_methods = list(SUITABLE_METHODS[kind])
    for other, other_count in totals.formats.items():
        if other == fmt:
            continue
        for file, row in totals.first_rows.get(other, []):
            totals.add_issue(
                _issue(
                    IssueCode.MIXED_FORMATS,
                    f"the row is {describe_format(other)}, but most rows ({count}) are "
                    f"{describe_format(fmt)}; use one format for the whole dataset",
                    row=row,
                    file=file,
                ),
                count=0,
            )
        totals.counts[IssueCode.MIXED_FORMATS] += other_count
    if request.method not in SUITABLE_METHODS[kind]:
        _propose(request, report, totals, mapped, fmt)
    if kind is FormatKind.UNPAIRED_PREFERENCE and request.method is Method.KTO:
        true, false, _ = totals.labels
        if not (true and false):
            totals.add_issue(
                _issue(
                    IssueCode.SINGLE_LABEL_VALUE,
                    f"every label is {'true' if true else 'false'}; KTO needs desirable (true) "
                    "and undesirable (false) examples",
                    column="label",
                )
            )
    if request.method is Method.GRPO and "prompt" in mapped:
        report.reward_columns = [
            c for c in (column_map.get(c, c) for c in raw_columns) if c != "prompt"
        ]
        if report.reward_columns:
            totals.add_issue(
                _issue(
                    IssueCode.REWARD_COLUMNS,
                    f"columns {', '.join(report.reward_columns)} are passed to the reward "
                    "functions as keyword arguments",
                )
            )


def _propose(
    request: FineTuneRequest,
    report: ValidationReport,
    totals: _Totals,
    mapped: set[str],
    fmt: FormatId | None,
) -> None:
    """Error for a dataset whose columns do not fit the method, with a column map when one would."""
    method = request.method
    proposal = propose_column_map(mapped)
    renamed = {proposal.get(c, c) for c in mapped}
    kind = detect_kind(renamed)
    if proposal and kind is not None and method in SUITABLE_METHODS[kind]:
        report.column_map = {**request.dataset.column_map, **proposal}
        note = ""
        if proposal.get("conversations") == "messages":
            note = " (ShareGPT turns: 'from' human/gpt/system becomes role user/assistant/system, 'value' content)"
        totals.add_issue(
            _issue(
                IssueCode.NEEDS_COLUMN_MAP,
                f"{method.value} needs {_needs(method)}; the columns match with "
                f"dataset.column_map = {report.column_map}{note}",
            )
        )
        return
    found = describe_format(fmt) if fmt else "no recognised format"
    code = IssueCode.UNSUITABLE_FORMAT if fmt else IssueCode.MISSING_COLUMNS
    totals.add_issue(
        _issue(
            code,
            f"{method.value} needs {_needs(method)}; the dataset is {found} "
            f"(columns: {', '.join(sorted(mapped)) or 'none'})",
        )
    )


def _needs(method: Method) -> str:
    return {
        Method.SFT: "'messages', 'text', or 'prompt'+'completion'",
        Method.DPO: "'chosen'+'rejected' (with or without 'prompt')",
        Method.GRPO: "'prompt'",
        Method.KTO: "'prompt'+'completion'+'label' (boolean)",
    }[method]


def _token_rows(
    request: FineTuneRequest, files: list[DataFile], dataset: Any
) -> Iterator[tuple[Any, dict]]:
    column_map = request.dataset.column_map
    if dataset is not None:
        return (((None, n), row) for n, row in iter_hub_rows(dataset, column_map))
    several = len(files) > 1
    return chain.from_iterable(
        (((f.name if several else None, n), row) for n, row in iter_file_rows(f, column_map))
        for f in files
    )


def check_dataset(
    request: FineTuneRequest,
    *,
    tokenizer_path: str | None = None,
    min_rows: int = DEFAULT_MIN_ROWS,
    token_rows: int = TOKEN_ROWS,
) -> ValidationReport:
    """Check the request's dataset for its method; never raises for a bad dataset.

    `tokenizer_path` names the model whose tokenizer counts tokens (default: the request's
    base model); `token_rows` rows at most are tokenised, and 0 skips token counting.
    """
    started = time.perf_counter()
    source = request.dataset
    totals = _Totals()
    raw_columns: list[str] = []
    files: list[DataFile] = []
    dataset = None
    try:
        if source.is_local:
            raw_columns, files = _scan_local(request, totals)
        else:
            raw_columns, dataset = _scan_hub(request, totals)
    except SourceError as exc:
        totals.add_issue(_issue(exc.code, str(exc), file=exc.file))
    report = ValidationReport(
        dataset=source.path,
        method=request.method,
        row_count=totals.rows,
        columns=[source.column_map.get(c, c) for c in raw_columns],
    )
    readable = not any(
        i.code
        in (
            IssueCode.HUB_UNREACHABLE,
            IssueCode.DATASET_NOT_FOUND,
            IssueCode.SPLIT_NOT_FOUND,
            IssueCode.NO_DATA_FILES,
        )
        for i in totals.issues
    )
    complete = readable and not totals.counts[IssueCode.UNREADABLE_FILE]
    if readable:
        if totals.rows == 0 and not totals.issues:
            totals.add_issue(_issue(IssueCode.EMPTY_FILE, "the dataset has no rows"))
        elif 0 < totals.rows < min_rows:
            totals.add_issue(
                _issue(
                    IssueCode.TOO_FEW_ROWS,
                    f"{totals.rows} rows; at least {min_rows} are needed to train",
                )
            )
        _decide_format(request, report, totals, raw_columns)
        repeated, examples = totals.duplicates()
        for file_index, row, first_file, first_row in examples:
            where = f"row {first_row}" + (
                "" if first_file == file_index else f" of {totals.files[first_file]}"
            )
            totals.add_issue(
                _issue(
                    IssueCode.DUPLICATE_ROW,
                    f"the same as {where}",
                    row=row,
                    file=totals.files[file_index],
                ),
                count=0,
            )
        totals.counts[IssueCode.DUPLICATE_ROW] += repeated
    report.seconds = round(time.perf_counter() - started, 3)
    if complete and report.format_kind is not None and totals.rows and token_rows > 0:
        _add_token_stats(request, report, totals, files, dataset, tokenizer_path, token_rows)
    for issue in totals.issues:
        issue.severity = Severity.WARNING if issue.code in WARNING_CODES else Severity.ERROR
    report.errors = [i for i in totals.issues if i.severity is Severity.ERROR]
    report.warnings = [i for i in totals.issues if i.severity is Severity.WARNING]
    for code, count in totals.counts.items():
        if count:
            target = report.warning_counts if code in WARNING_CODES else report.error_counts
            target[code.value] = count
    return report


def _add_token_stats(
    request: FineTuneRequest,
    report: ValidationReport,
    totals: _Totals,
    files: list[DataFile],
    dataset: Any,
    tokenizer_path: str | None,
    token_rows: int,
) -> None:
    tokenizer, name = load_tokenizer(request.base_model, tokenizer_path)
    if tokenizer is None:
        totals.add_issue(_issue(IssueCode.TOKENS_NOT_COUNTED, f"token lengths not checked: {name}"))
        return
    try:
        stats, too_long = count_tokens(
            _token_rows(request, files, dataset),
            kind=report.format_kind,
            conversational=bool(report.conversational),
            tokenizer=tokenizer,
            tokenizer_name=name,
            max_length=request.hyperparameters.max_length,
            row_count=totals.rows,
            limit=token_rows,
        )
    except SourceError as exc:
        totals.add_issue(_issue(IssueCode.TOKENS_NOT_COUNTED, f"token lengths not checked: {exc}"))
        return
    report.token_stats = stats
    for (file, row), chars in too_long[:KEEP_PER_CODE]:
        message = f"longer than max_length {stats.max_length} tokens; the trainer truncates it"
        if chars is not None:
            message = (
                f"{chars:,} characters: more than max_length {stats.max_length} tokens can hold "
                f"({stats.bound_chars:,} characters with this tokenizer), so it was counted as too "
                "long without being tokenised; the trainer truncates it"
            )
        totals.add_issue(
            _issue(IssueCode.TOO_LONG, message, row=row, file=file),
            count=0,
        )
    totals.counts[IssueCode.TOO_LONG] += len(too_long)
