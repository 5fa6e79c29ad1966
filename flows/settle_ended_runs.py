"""The `settle_ended_runs` flow: what a run that ended without cleaning up leaves behind is cleaned up.

An automation starts it whenever a `finetune` run reaches a final state (see
`deployments.run_safety`), so this happens on the server's side even when the run's own
process was killed and no hook ran: the jobs of a run that did not complete are cancelled on
every backend, and every hold whose run has ended (or whose time is up) is released.
"""

from __future__ import annotations

from uuid import UUID

from prefect import flow, task
from prefect.client.orchestration import get_client

from blocks.budget import BudgetPolicyMissing, load_budget_policy
from tasks.costs import budget
from tasks.jobs.hooks import cancel_job_of_flow_run


@task(name="cancel-jobs-of-ended-run", timeout_seconds=900)  # a job cancel waits for it to stop
def cancel_jobs_of_ended_run(flow_run_id: UUID) -> str:
    """Cancel the training jobs of a run that ended without completing (a completed run's jobs ended)."""
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
    if run.state is None or not run.state.is_final():
        return f"flow run {flow_run_id} is {run.state_name}: its jobs are its own business"
    if run.state.is_completed():
        return f"flow run {flow_run_id} completed: its jobs have ended"
    cancel_job_of_flow_run(None, run, run.state)
    return f"flow run {flow_run_id} ended {run.state.name}: its jobs were cancelled"


@task(name="release-holds-of-ended-runs", timeout_seconds=600)
def release_holds_of_ended_runs() -> list[str]:
    """Release every hold whose run ended without settling it, or whose time is up."""
    try:
        policy = load_budget_policy()
    except BudgetPolicyMissing:
        policy = None  # holds only exist under a policy, but a ledger URL may come from the env
    return [f"{h.run_key}: {h.note}" for h in budget.settle_ended_runs(budget.ledger_for(policy))]


@flow(name="settle_ended_runs", log_prints=True)
def settle_ended_runs(flow_run_id: UUID | None = None) -> list[str]:
    """Cancel the jobs of `flow_run_id` if it ended without completing; release ended runs' holds."""
    done = [cancel_jobs_of_ended_run(flow_run_id)] if flow_run_id else []
    done += release_holds_of_ended_runs()
    for line in done:
        print(line)
    return done


if __name__ == "__main__":
    import sys

    settle_ended_runs(UUID(sys.argv[1]) if len(sys.argv) > 1 else None)
