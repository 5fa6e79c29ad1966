"""The approval input: a required choice, no default, so a note alone never decides."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.approval import ApprovalDecision


def test_the_decision_is_a_required_choice_without_default():
    schema = ApprovalDecision.model_json_schema()
    assert "decision" in schema["required"]
    assert schema["properties"]["decision"]["enum"] == ["approve", "reject"]
    assert "default" not in schema["properties"]["decision"]
    with pytest.raises(ValidationError, match="decision"):
        ApprovalDecision(note="looks fine")
    with pytest.raises(ValidationError, match="decision"):
        ApprovalDecision(decision="yes")


def test_approved_reads_the_choice():
    assert ApprovalDecision(decision="approve").approved is True
    assert ApprovalDecision(decision="reject", note="too dear").approved is False


def test_the_budget_form_presets_no_choice():
    from blocks.budget import BudgetPolicy
    from tasks.costs.budget import approval_form
    from tasks.costs.ledger import Ledger
    from tests.estimates import paid_estimate

    cost = paid_estimate(20)
    ledger = Ledger("sqlite://")
    reservation = ledger.reserve(
        run_key="form",
        backend="hf-jobs",
        hardware=cost.hardware,
        price_per_hour=1,
        expected_usd=10,
        high_usd=20,
        monthly_limit_usd=100,
        per_job_max_usd=50,
        needs_approval=True,
    )
    policy = BudgetPolicy(monthly_limit_usd=100, approval_threshold_usd=10, per_job_max_usd=50)
    form = approval_form(cost, reservation, policy)
    assert "default" not in form.model_json_schema()["properties"]["decision"]
    assert "Approve a training run of up to $20.00?" in form._description
