"""The budget gate in a flow: automatic approval, a human approval through pause/resume, rejection, timeout."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.flow_runs import resume_flow_run

from blocks.budget import BudgetPolicy, BudgetPolicyMissing, load_budget_policy
from schemas.request import Backend
from tasks.costs import CostEstimate, free_estimate
from tasks.costs.budget import gate_budget, record_job_start, release_budget_of_flow_run
from tasks.costs.ledger import BudgetExceeded, Decision, Ledger, ReservationStatus
from tasks.jobs import JobHandle


def estimate(high: float) -> CostEstimate:
    return CostEstimate(
        backend=Backend.HF_JOBS,
        hardware="a10g-small",
        price_per_hour=1.0,
        low_usd=high / 3,
        expected_usd=high / 2,
        high_usd=high,
        expected_seconds=1800,
        timeout_seconds=7200,
        source="test prices",
    )


@flow(name="gate-test")
def gated(cost: CostEstimate, run_key: str, policy_name: str) -> str:
    reservation = gate_budget(cost, run_key=run_key, policy_name=policy_name, poll_interval=1)
    return reservation.status.value if reservation else "free"


@pytest.fixture
def policy(prefect_server, tmp_path) -> tuple[str, Ledger]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    BudgetPolicy(
        monthly_limit_usd=100,
        approval_threshold_usd=10,
        per_job_max_usd=50,
        approval_timeout_seconds=3,
        ledger_url=url,
    ).save(name)
    return name, Ledger(url)


def run_in_thread(cost: CostEstimate, run_key: str, name: str) -> tuple[threading.Thread, list]:
    outcome: list = []

    def target():
        outcome.append(gated(cost, run_key, name, return_state=True))

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


def wait_for_pause(ledger: Ledger, run_key: str) -> str:
    """The flow run id of `run_key`, once it is paused and its approval form is saved."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        entries = [e for e in ledger.entries() if e.run_key == run_key]
        if entries and entries[0].status is ReservationStatus.AWAITING_APPROVAL:
            with get_client(sync_client=True) as client:
                if client.read_flow_run(entries[0].flow_run_id).state.is_paused():
                    return entries[0].flow_run_id
        time.sleep(0.2)
    raise AssertionError(f"{run_key} never paused for approval")


def resume(flow_run_id: str, run_input: dict) -> None:
    # The form's schema is saved just after the pause; the server refuses input until then.
    for _ in range(50):
        try:
            return resume_flow_run(flow_run_id, run_input=run_input)
        except RuntimeError:
            time.sleep(0.2)
    raise AssertionError("the paused run never accepted the approval")


def test_free_runs_need_no_policy_and_paid_runs_do(prefect_server):
    assert gated(free_estimate(), "local-run", "never-saved") == "free"
    with pytest.raises(BudgetPolicyMissing, match="lmft budget set --monthly-limit"):
        load_budget_policy("never-saved")
    state = gated(estimate(5), "paid-run", "never-saved", return_state=True)
    assert state.is_failed() and "lmft budget set" in state.message


def test_below_threshold_is_approved_automatically_and_over_budget_fails_with_figures(policy):
    name, ledger = policy
    assert gated(estimate(8), "cheap", name) == "approved"
    entry = ledger.entries()[0]
    assert entry.decision is Decision.AUTO_APPROVED and entry.reserved_usd == 8
    with pytest.raises(BudgetExceeded, match=r"per-job maximum of \$50.00"):
        gated(estimate(60), "too-big", name)
    assert [e.run_key for e in ledger.entries()] == ["cheap"]  # nothing held for the refused run


@pytest.mark.parametrize("approve", [True, False])
def test_a_human_approves_or_rejects_through_the_paused_run(policy, approve):
    name, ledger = policy
    run_key = f"expensive-{approve}"
    thread, outcome = run_in_thread(estimate(20), run_key, name)
    flow_run_id = wait_for_pause(ledger, run_key)
    resume(
        flow_run_id,
        {"approve": approve, "approver": "ana@example.com", "note": "checked the estimate"},
    )
    thread.join(timeout=60)
    entry = ledger.entries()[0]
    assert (entry.approver, entry.note) == ("ana@example.com", "checked the estimate")
    if approve:
        assert outcome[0].is_completed() and outcome[0].result() == "approved"
        assert entry.decision is Decision.APPROVED and entry.reserved_usd == 20
    else:
        assert outcome[0].is_failed() and "rejected" in outcome[0].message
        assert entry.decision is Decision.REJECTED and entry.status is ReservationStatus.RELEASED
        assert ledger.totals().reserved_usd == 0


def test_no_decision_before_the_timeout_is_a_rejection(policy):
    name, ledger = policy
    state = gated(estimate(20), "unattended", name, return_state=True)
    assert state.is_failed()  # Prefect names it "failed and never resumed"; the ledger says why
    entry = ledger.entries()[0]
    assert entry.decision is Decision.TIMED_OUT and entry.status is ReservationStatus.RELEASED
    assert entry.note == "no decision within 3 s"


@pytest.fixture
def strict_policy(prefect_server, tmp_path) -> tuple[str, Ledger]:
    """A policy under which every run, free or below the threshold, waits for a human."""
    name = f"strict-{uuid.uuid4().hex[:8]}"
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    BudgetPolicy(
        monthly_limit_usd=100,
        approval_threshold_usd=10,
        per_job_max_usd=50,
        approval_timeout_seconds=60,
        require_approval_for_all_runs=True,
        ledger_url=url,
    ).save(name)
    return name, Ledger(url)


def test_free_runs_pass_without_an_entry_when_the_option_is_off(policy):
    name, ledger = policy
    assert gated(free_estimate(), "local-run", name) == "free"
    assert ledger.entries() == []


@pytest.mark.parametrize("approve", [True, False])
def test_require_approval_for_all_runs_pauses_a_free_run(strict_policy, approve):
    name, ledger = strict_policy
    run_key = f"local-{approve}"
    thread, outcome = run_in_thread(free_estimate(), run_key, name)
    flow_run_id = wait_for_pause(ledger, run_key)
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(
            flow_run_id
        ).state.state_details.run_input_keyset  # a form waits for input
    resume(
        flow_run_id,
        {"approve": approve, "approver": "ana@example.com", "note": "fine on the lab box"},
    )
    thread.join(timeout=60)
    (entry,) = ledger.entries()
    assert (entry.approver, entry.note, entry.high_usd, entry.reserved_usd) == (
        "ana@example.com",
        "fine on the lab box",
        0,
        0,
    )
    if approve:
        assert outcome[0].is_completed() and outcome[0].result() == "approved"
        assert entry.decision is Decision.APPROVED and entry.status is ReservationStatus.APPROVED
    else:
        assert outcome[0].is_failed() and "ana@example.com rejected" in outcome[0].message
        assert entry.decision is Decision.REJECTED and entry.status is ReservationStatus.RELEASED


def test_require_approval_for_all_runs_pauses_a_paid_run_below_the_threshold(strict_policy):
    name, ledger = strict_policy
    thread, outcome = run_in_thread(estimate(2), "cheap-but-checked", name)
    flow_run_id = wait_for_pause(ledger, "cheap-but-checked")
    resume(flow_run_id, {"approve": True, "approver": "bo", "note": "ok"})
    thread.join(timeout=60)
    assert outcome[0].result() == "approved"
    (entry,) = ledger.entries()
    assert (entry.decision, entry.approver, entry.reserved_usd) == (Decision.APPROVED, "bo", 2)


def test_a_free_run_is_not_refused_when_the_month_is_over_its_limit(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    spent = ledger.reserve(
        run_key="paid",
        backend="hf-jobs",
        hardware="a10g-small",
        price_per_hour=1,
        expected_usd=9,
        high_usd=9,
        monthly_limit_usd=10,
        per_job_max_usd=10,
        needs_approval=False,
    )
    ledger.settle(spent.id, 9)
    free = ledger.reserve(
        run_key="local",
        backend="local",
        hardware="local",
        price_per_hour=0,
        expected_usd=0,
        high_usd=0,
        monthly_limit_usd=5,
        per_job_max_usd=5,
        needs_approval=True,  # the limit was lowered below the spend
    )
    assert free.status is ReservationStatus.AWAITING_APPROVAL and free.reserved_usd == 0


@flow(name="failing-paid-run", on_failure=[release_budget_of_flow_run])
def failing_paid_run(cost: CostEstimate, started_minutes_ago: int | None) -> None:
    reservation = gate_budget(cost, run_key=f"failing-{started_minutes_ago}")
    if started_minutes_ago is not None:
        submitted = datetime.now(UTC) - timedelta(minutes=started_minutes_ago)
        record_job_start(
            reservation,
            JobHandle(
                backend=Backend.HF_JOBS, job_id="j", idempotency_key="k", submitted_at=submitted
            ),
        )
    raise RuntimeError("the training job failed")


@pytest.mark.parametrize("started_minutes_ago", [None, 30])
def test_a_failed_run_keeps_what_was_billed_and_releases_the_rest(
    prefect_server, tmp_path, started_minutes_ago
):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    BudgetPolicy(
        monthly_limit_usd=100, approval_threshold_usd=50, per_job_max_usd=50, ledger_url=url
    ).save("default", overwrite=True)
    state = failing_paid_run(estimate(20), started_minutes_ago, return_state=True)
    assert state.is_failed()
    entry = Ledger(url).entries()[0]
    assert entry.reserved_usd == 0 and "Failed" in entry.note
    if started_minutes_ago is None:
        assert entry.status is ReservationStatus.RELEASED and entry.actual_usd == 0
    else:  # 30 (or 31) started minutes at $1/h
        assert entry.status is ReservationStatus.SETTLED and 0.5 <= entry.actual_usd <= 0.52


@flow(name="killed-run")
def killed_run() -> None:
    """Stands for a finetune run whose process was killed: only its flow run record exists."""


def flow_run_in(state) -> str:
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(killed_run)
        client.set_flow_run_state(run.id, state, force=True)
        return str(run.id)


def test_the_gate_releases_the_holds_of_runs_that_ended_without_settling(policy):
    from prefect.states import Crashed, Running

    name, ledger = policy  # $100 a month, $50 per job at most
    crashed = [flow_run_in(Crashed(message="killed")) for _ in range(2)]
    running = flow_run_in(Running())
    for run_id, high in ((crashed[0], 45), (crashed[1], 45), (running, 10)):
        ledger.reserve(
            run_key=f"run-{run_id}",
            backend="hf-jobs",
            hardware="a10g-small",
            price_per_hour=1.0,
            expected_usd=high / 2,
            high_usd=high,
            monthly_limit_usd=100,
            per_job_max_usd=50,
            needs_approval=False,
            flow_run_id=run_id,
        )
    assert ledger.totals(limit_usd=100).left_usd == 0

    assert gated(estimate(5), f"after-{uuid.uuid4().hex[:6]}", name) == "approved"

    by_run = {e.flow_run_id: e for e in ledger.entries()}
    for run_id in crashed:
        assert by_run[run_id].status is ReservationStatus.RELEASED
        assert by_run[run_id].closed_by == "reconciler"
        assert "ended Crashed" in by_run[run_id].note
    assert by_run[running].is_open  # a run still going keeps its hold
    assert ledger.totals(limit_usd=100).reserved_usd == 15
