"""`lmft approve` / `lmft reject` answer a run waiting at the budget gate with an ApprovalDecision."""

from __future__ import annotations

import threading
import time
import uuid

from prefect import flow
from prefect.client.orchestration import get_client
from typer.testing import CliRunner

from blocks.budget import BudgetPolicy
from cli.app import app
from tasks.costs.budget import gate_budget
from tasks.costs.ledger import Decision, Ledger, ReservationStatus
from tests.estimates import paid_estimate

runner = CliRunner()


@flow(name="cli-gate")
def gated(policy_name: str) -> str:
    reservation = gate_budget(
        paid_estimate(20), run_key="cli", policy_name=policy_name, poll_interval=1
    )
    return reservation.status.value if reservation else "free"


def test_lmft_approve_resumes_the_waiting_run_and_reject_refuses_a_finished_one(
    prefect_server, tmp_path
):
    name = f"cli-{uuid.uuid4().hex[:8]}"
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    BudgetPolicy(
        monthly_limit_usd=100,
        approval_threshold_usd=10,
        per_job_max_usd=50,
        approval_timeout_seconds=120,
        ledger_url=ledger.url,
    ).save(name)
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(gated(name, return_state=True)))
    thread.start()

    deadline = time.monotonic() + 60
    while True:  # until the run waits with its form saved: the server then accepts the decision
        entries = ledger.entries()
        if entries and entries[0].flow_run_id:
            run_id = entries[0].flow_run_id
            with get_client(sync_client=True) as client:
                if client.read_flow_run(run_id).state.is_paused():
                    approved = runner.invoke(
                        app, ["approve", run_id, "--note", "ok", "--approver", "bo"]
                    )
                    if approved.exit_code == 0:
                        break
        assert time.monotonic() < deadline, "the run never waited for approval"
        time.sleep(0.5)
    assert f"flow run {run_id}: approved by bo" in approved.output
    thread.join(timeout=60)
    assert outcome[0].result() == "approved"
    (entry,) = ledger.entries()
    assert (entry.decision, entry.approver, entry.note, entry.status) == (
        Decision.APPROVED,
        "bo",
        "ok",
        ReservationStatus.APPROVED,
    )

    late = runner.invoke(app, ["reject", run_id, "--note", "too late"])
    assert late.exit_code == 1 and "is not waiting for approval" in late.output
    missing = runner.invoke(app, ["approve", str(uuid.uuid4())])
    assert missing.exit_code == 1 and "no flow run" in missing.output
