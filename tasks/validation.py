"""Check a dataset for a training method before anything is spent."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from pydantic import BaseModel, Field

from tasks.request import DatasetSource, FineTuneRequest, Method

REQUIRED_COLUMNS: dict[Method, list[tuple[str, ...]]] = {
    # Each entry lists alternatives: the dataset must have all columns of one of them.
    Method.SFT: [("messages",), ("text",), ("prompt", "completion")],
    Method.DPO: [("chosen", "rejected")],
    Method.GRPO: [("prompt",)],
    Method.KTO: [("prompt", "completion", "label")],
}


class ValidationIssue(BaseModel):
    """One problem found in the dataset."""

    code: str = Field(description="Stable error code, e.g. 'missing_column'.")
    message: str
    row: int | None = Field(default=None, description="1-based row number, when the problem is in one row.")
    column: str | None = None


class TokenStats(BaseModel):
    """Tokenised lengths of the rows, as the training will see them."""

    rows: int
    total_tokens: int
    mean_tokens: float
    max_tokens: int
    p95_tokens: int
    over_max_length: int
    tokenizer: str


class ValidationReport(BaseModel):
    """What the validator found: format, suitable methods, problems, statistics."""

    dataset: str
    method: Method
    row_count: int
    columns: list[str]
    detected_format: str | None = None
    suitable_methods: list[Method] = []
    errors: list[ValidationIssue] = []
    warnings: list[ValidationIssue] = []
    column_map: dict[str, str] = Field(default_factory=dict, description="Proposed renames to the expected columns.")
    token_stats: TokenStats | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


class DatasetInvalid(ValueError):
    """The dataset cannot be used for the method; the message lists the errors."""


def load_rows(source: DatasetSource):
    """The dataset as a `datasets.Dataset` (local) or streaming `IterableDataset` (Hub)."""
    from datasets import load_dataset

    if source.is_local:
        path = Path(source.path).expanduser()
        files = [str(p) for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [str(path)]
        name = files[0].removesuffix(".gz")
        builder = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}[name.rsplit(".", 1)[-1]]
        dataset = load_dataset(builder, data_files=files, split="train")
    else:
        dataset = load_dataset(source.path, source.config, split=source.split, revision=source.revision, streaming=True)
    if source.column_map:
        dataset = dataset.rename_columns(source.column_map)
    return dataset


def check_columns(request: FineTuneRequest) -> ValidationReport:
    """Load the dataset and check it has the columns the method needs."""
    dataset = load_rows(request.dataset)
    columns = list(dataset.column_names or [])
    rows = dataset.num_rows if hasattr(dataset, "num_rows") else 0
    report = ValidationReport(dataset=request.dataset.path, method=request.method, row_count=rows, columns=columns)
    options = REQUIRED_COLUMNS[request.method]
    if not any(all(c in columns for c in option) for option in options):
        wanted = " or ".join("+".join(option) for option in options)
        report.errors.append(
            ValidationIssue(
                code="missing_column",
                message=f"{request.method.value} needs columns {wanted}; the dataset has {', '.join(columns) or 'none'}",
            )
        )
    if rows == 0 and request.dataset.is_local:
        report.errors.append(ValidationIssue(code="empty_dataset", message="the dataset has no rows"))
    return report


@task(name="validate-dataset")
def validate_dataset(request: FineTuneRequest) -> ValidationReport:
    """Validate the request's dataset for its method."""
    return check_columns(request)


def raise_on_errors(report: ValidationReport) -> None:
    """Stop the pipeline when the report has errors."""
    if report.errors:
        lines = [f"- [{e.code}] " + (f"row {e.row}: " if e.row else "") + e.message for e in report.errors[:20]]
        raise DatasetInvalid(f"dataset {report.dataset!r} is not valid for {report.method.value}:\n" + "\n".join(lines))
