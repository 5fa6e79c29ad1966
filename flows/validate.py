"""The `validate` flow: check a request's dataset, return the `ValidationReport`.

Run it alone: `python -m flows.validate examples/pirate_chat.jsonl`
"""

from __future__ import annotations

from prefect import flow

from tasks.request import FineTuneRequest
from tasks.validation import ValidationReport, validate_dataset


@flow(name="validate", persist_result=True, result_serializer="json", log_prints=True)
def validate(request: FineTuneRequest) -> ValidationReport:
    """Validate `request.dataset` for `request.method`; the report lists errors instead of raising."""
    return validate_dataset(request)


if __name__ == "__main__":
    import sys

    from tasks.request import DatasetSource

    print(validate(FineTuneRequest(dataset=DatasetSource(path=sys.argv[1]))).model_dump_json(indent=2))
