"""The `cost_report` flow reads the ledger and publishes a table artifact."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from blocks.budget import BudgetPolicy
from flows.cost_report import cost_report
from tasks.costs.ledger import Ledger


def test_cost_report_shows_spend_holds_and_budget_left(prefect_server, tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    BudgetPolicy(
        monthly_limit_usd=50, approval_threshold_usd=10, per_job_max_usd=20, ledger_url=url
    ).save("default", overwrite=True)
    ledger = Ledger(url)
    common = dict(
        backend="hf-jobs",
        hardware="l4x1",
        price_per_hour=0.8,
        monthly_limit_usd=50,
        per_job_max_usd=20,
        needs_approval=False,
    )
    done = ledger.reserve(run_key="done", expected_usd=3, high_usd=6, **common)
    ledger.settle(done.id, 2.5)
    ledger.reserve(run_key="running", expected_usd=4, high_usd=8, **common)

    report = cost_report()

    assert (report.totals.spent_usd, report.totals.reserved_usd, report.left_usd) == (
        2.5,
        8.0,
        39.5,
    )
    assert {row["run"]: row["actual $"] for row in report.rows()} == {"done": "2.50", "running": ""}
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["cost-report"]))
        )
    assert artifacts and artifacts[0].type == "table"
    with pytest.raises(Exception, match="pattern"):
        cost_report("2026-13")
