"""The `validate` flow: check a request's dataset for its method; nothing is trained or spent.

Run it alone: `python -m flows.validate examples/pirate_chat.jsonl`
"""

from __future__ import annotations

from prefect import flow

from schemas.request import FineTuneRequest
from tasks.validation import DEFAULT_MIN_ROWS, ValidationReport, validate_dataset


@flow(name="validate", persist_result=True, result_serializer="json", log_prints=True)
def validate(request: FineTuneRequest, min_rows: int = DEFAULT_MIN_ROWS) -> ValidationReport:
    """Validate `request.dataset` for `request.method`; the report lists errors instead of raising."""
    report = validate_dataset(request, min_rows=min_rows)
    print(
        f"{report.row_count} rows, {report.detected_format or 'no recognised format'}: "
        f"{len(report.errors)} errors, {len(report.warnings)} warnings"
    )
    return report


if __name__ == "__main__":
    import sys

    from schemas.request import DatasetSource

    print(
        validate(FineTuneRequest(dataset=DatasetSource(path=sys.argv[1]))).model_dump_json(indent=2)
    )
