"""The `cost_report` flow: month-to-date spend, open holds, estimates next to actual costs."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks.costs.report import CostReport, build_cost_report, publish_cost_report


@flow(name="cost_report", log_prints=True)
def cost_report(
    month: Annotated[
        str | None, Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="YYYY-MM (UTC).")
    ] = None,
) -> CostReport:
    """Report the ledger of `month` (YYYY-MM, default this month) as a table artifact."""
    report = build_cost_report(month)
    print(publish_cost_report(report))
    return report


if __name__ == "__main__":
    import sys

    cost_report(sys.argv[1] if len(sys.argv) > 1 else None)
