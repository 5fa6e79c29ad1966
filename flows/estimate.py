"""The `estimate` flow: validate the dataset, then estimate what training it will cost.

Run it alone: `python -m flows.estimate examples/pirate_chat.jsonl`
"""

from __future__ import annotations

from prefect import flow

from schemas.request import FineTuneRequest
from tasks.costs import CostEstimate, estimate_cost
from tasks.validation import raise_on_errors, validate_dataset


@flow(name="estimate", persist_result=True, result_serializer="json", log_prints=True)
def estimate(request: FineTuneRequest) -> CostEstimate:
    """Estimate the cost of `request`; an invalid dataset fails the run with the errors."""
    report = validate_dataset(request)
    raise_on_errors(report)
    return estimate_cost(request, report)


if __name__ == "__main__":
    import sys

    from schemas.request import DatasetSource

    print(
        estimate(FineTuneRequest(dataset=DatasetSource(path=sys.argv[1]))).model_dump_json(indent=2)
    )
