"""Month-to-date spend, open holds and each run's estimate next to its actual cost."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from blocks.budget import (
    BUDGET_BLOCK_NAME,
    BudgetPolicy,
    BudgetPolicyMissing,
    BudgetPolicyUnavailable,
    load_budget_policy,
)
from tasks.costs.budget import ledger_for, settle_ended_runs
from tasks.costs.ledger import LedgerTotals, Reservation, current_month


class CostReport(BaseModel):
    """The ledger of one month, as `lmft costs` and the `cost_report` flow show it."""

    ledger: str
    totals: LedgerTotals
    left_usd: float | None
    entries: list[Reservation]
    note: str = ""

    def rows(self) -> list[dict[str, str]]:
        """One row per run, for a table."""
        return [
            {
                "run": e.run_key,
                "created": f"{e.created_at:%Y-%m-%d %H:%M}",
                "hardware": e.hardware,
                "status": e.status.value,
                "decision": e.decision.value + (f" by {e.approver}" if e.approver else ""),
                "estimate $": f"{e.expected_usd:.2f} (≤ {e.high_usd:.2f})",
                "held $": f"{e.reserved_usd:.2f}",
                "actual $": "" if e.actual_usd is None else f"{e.actual_usd:.2f}",
                "closed by": e.closed_by or "",
            }
            for e in self.entries
        ]


def build_cost_report(
    month: str | None = None, *, policy_name: str = BUDGET_BLOCK_NAME
) -> CostReport:
    """Read the ledger of `month` (default: this month, UTC); the budget left needs a saved policy.

    Holds of runs that ended without settling them are released first (`settle_ended_runs`).
    """
    month = month or current_month()
    policy: BudgetPolicy | None
    note = ""
    try:
        policy = load_budget_policy(policy_name)
    except (BudgetPolicyMissing, BudgetPolicyUnavailable) as exc:
        policy, note = None, f"{exc}; showing the default ledger without a limit"
    ledger = ledger_for(policy)
    if policy is not None:  # the Prefect API answers: release the holds of runs that ended
        settle_ended_runs(ledger)
    totals = ledger.totals(month, limit_usd=policy.monthly_limit_usd if policy else None)
    return CostReport(
        ledger=ledger.describe(),
        totals=totals,
        left_usd=totals.left_usd,
        entries=ledger.entries(month=month),
        note=note,
    )


@task(name="publish-cost-report")
def publish_cost_report(report: CostReport) -> str:
    """Publish the report as a table artifact; return its summary line."""
    t = report.totals
    limit = (
        "no budget policy saved"
        if t.limit_usd is None
        else f"limit ${t.limit_usd:.2f}, left ${report.left_usd:.2f}"
    )
    summary = f"{t.month}: spent ${t.spent_usd:.2f}, held by {t.open_reservations} open runs ${t.reserved_usd:.2f}, {limit}"
    create_table_artifact(
        report.rows(), key="cost-report", description=f"{summary} (ledger {report.ledger})"
    )
    return summary
