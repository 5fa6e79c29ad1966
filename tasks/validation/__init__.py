"""Check a dataset for a training method before anything is spent.

`validate_dataset` (the Prefect task) reads the dataset wherever it is (local JSONL,
JSON, Parquet, CSV, gzipped or not, a folder of them, or a Hub dataset streamed), checks
every row against TRL's dataset formats and the method's rules, counts tokens with the
base model's tokenizer and chat template, and publishes the report as artifacts.
`raise_on_errors` stops the flow when the report has errors; warnings let it go on.
"""

from __future__ import annotations

from prefect import task

from schemas.request import FineTuneRequest
from schemas.validation import (
    DatasetInvalid,
    FormatKind,
    IssueCode,
    Severity,
    TokenStats,
    ValidationIssue,
    ValidationReport,
)
from tasks.caching import VALIDATION_CACHE
from tasks.validation._artifact import publish_report, render_markdown
from tasks.validation._check import DEFAULT_MIN_ROWS, check_dataset
from tasks.validation._sources import load_rows

VALIDATION_TIMEOUT_SECONDS = 3600
"""A Hub dataset is streamed from the Hub while it is checked."""

__all__ = [
    "DEFAULT_MIN_ROWS",
    "DatasetInvalid",
    "FormatKind",
    "IssueCode",
    "Severity",
    "TokenStats",
    "ValidationIssue",
    "ValidationReport",
    "check_dataset",
    "load_rows",
    "raise_on_errors",
    "render_markdown",
    "validate_dataset",
    "validate_eval_dataset",
]


@task(
    name="validate-dataset",
    cache_policy=VALIDATION_CACHE,
    persist_result=True,
    timeout_seconds=VALIDATION_TIMEOUT_SECONDS,
)
def validate_dataset(
    request: FineTuneRequest, tokenizer_path: str | None = None, min_rows: int = DEFAULT_MIN_ROWS
) -> ValidationReport:
    """Validate the request's dataset for its method and publish the report."""
    report = check_dataset(request, tokenizer_path=tokenizer_path, min_rows=min_rows)
    publish_report(report)
    return report


@task(name="validate-eval-dataset", timeout_seconds=VALIDATION_TIMEOUT_SECONDS)
def validate_eval_dataset(
    request: FineTuneRequest, tokenizer_path: str | None = None
) -> ValidationReport | None:
    """Validate `evaluation.eval_dataset` like the training data (None when the request has none)."""
    held_out = request.evaluation.eval_dataset if request.evaluation else None
    if held_out is None:
        return None
    if not held_out.column_map and request.dataset.column_map:  # as train.py reads it
        held_out = held_out.model_copy(update={"column_map": request.dataset.column_map})
    report = check_dataset(
        request.model_copy(update={"dataset": held_out}), tokenizer_path=tokenizer_path, min_rows=1
    )
    publish_report(report, key_prefix="eval-dataset")
    return report


def raise_on_errors(report: ValidationReport | None, *, field: str = "dataset") -> None:
    """Stop the pipeline when the report has errors; `field` names the request field in the message."""
    if report is not None and report.errors:
        counts = ", ".join(f"{code} ×{n}" for code, n in report.error_counts.items())
        lines = [f"- {issue.describe()}" for issue in report.errors[:20]]
        more = len(report.errors) - len(lines)
        raise DatasetInvalid(
            f"{field} {report.dataset!r} is not valid for {report.method.value} ({counts}):\n"
            + "\n".join(lines)
            + (f"\n… and {more} more listed in the report" if more > 0 else "")
        )
