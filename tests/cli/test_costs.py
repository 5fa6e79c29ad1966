"""`lmft budget set|show` save and read the BudgetPolicy block, approval of every run included."""

from __future__ import annotations

import uuid

from typer.testing import CliRunner

from blocks.budget import load_budget_policy
from cli.app import app

runner = CliRunner()
LIMITS = ["--monthly-limit", "200", "--approval-threshold", "20", "--per-job-max", "80"]


def test_budget_set_can_require_approval_for_every_run(prefect_server):
    name = f"cli-{uuid.uuid4().hex[:8]}"
    saved = runner.invoke(
        app, ["budget", "set", *LIMITS, "--require-approval-for-all-runs", "--name", name]
    )
    assert saved.exit_code == 0, saved.output
    assert "every run needs approval" in saved.output
    assert load_budget_policy(name).require_approval_for_all_runs is True
    shown = runner.invoke(app, ["budget", "show", "--name", name])
    assert "approve every run    yes, free local runs too" in shown.output

    off = runner.invoke(
        app, ["budget", "set", *LIMITS, "--approval-above-threshold-only", "--name", name]
    )
    assert off.exit_code == 0 and "approval above $20.00" in off.output
    assert load_budget_policy(name).require_approval_for_all_runs is False


def test_budget_release_frees_a_hold_by_hand_and_records_who_and_why(prefect_server, tmp_path):
    from blocks.budget import BudgetPolicy
    from tasks.costs.ledger import Ledger, ReservationStatus

    name = f"cli-{uuid.uuid4().hex[:8]}"
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    BudgetPolicy(
        monthly_limit_usd=10, approval_threshold_usd=10, per_job_max_usd=10, ledger_url=url
    ).save(name)
    ledger = Ledger(url)
    flow_run_id = str(
        uuid.uuid4()
    )  # a run this Prefect server never heard of: only a hand frees it
    ledger.reserve(
        run_key="stuck",
        backend="hf-jobs",
        hardware="a10g-small",
        price_per_hour=1.0,
        expected_usd=5,
        high_usd=10,
        monthly_limit_usd=10,
        per_job_max_usd=10,
        needs_approval=False,
        flow_run_id=flow_run_id,
    )

    refused = runner.invoke(
        app, ["budget", "release", flow_run_id, "--reason", " ", "--name", name]
    )
    assert refused.exit_code == 2 and "--reason" in refused.output
    released = runner.invoke(
        app,
        [
            "budget",
            "release",
            flow_run_id,
            "--reason",
            "worker lost",
            "--operator",
            "alice",
            "--name",
            name,
        ],
    )

    assert released.exit_code == 0, released.output
    assert "released the $10.00 hold of stuck" in released.output
    [entry] = ledger.entries()
    assert entry.status is ReservationStatus.RELEASED and entry.reserved_usd == 0
    assert entry.closed_by == "operator alice"
    assert entry.note == "released by alice with `lmft budget release`: worker lost"
    assert ledger.totals(limit_usd=10).left_usd == 10
    again = runner.invoke(app, ["budget", "release", flow_run_id, "--reason", "x", "--name", name])
    assert again.exit_code == 1 and "no open budget hold" in again.output
