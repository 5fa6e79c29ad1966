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
