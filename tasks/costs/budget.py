"""The budget gate: hold a run's high estimate, ask a human when it is expensive, settle or release.

`gate_budget` runs in the flow body (a waiting flow cannot run tasks, and Prefect suspends or
pauses the flow run itself); the ledger writes are tasks so they show in the run's graph.

A run of a deployment is suspended while it waits for the decision (`tasks.suspension`): its
process ends and its concurrency slot is free; the approval resumes it on any worker, which runs
the flow again up to here from persisted results (`reserve_budget` is cached, and the ledger
returns the open hold of a `run_key` anyway). Nobody answering is a rejection: Prefect's server
fails the suspended run at the timeout. No process of ours is left to see it, so the next gate
releases the holds of runs that ended while waiting (`release_holds_of_ended_runs`).
"""

from __future__ import annotations

import logging
import os
import uuid
from datetime import UTC, datetime
from uuid import UUID

from prefect import get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.exceptions import FlowPauseTimeout, ObjectNotFound
from prefect.runtime import flow_run as current_flow_run

from blocks.budget import (
    BUDGET_BLOCK_NAME,
    BudgetPolicy,
    BudgetPolicyMissing,
    BudgetPolicyUnavailable,
    load_budget_policy,
)
from schemas.approval import ApprovalDecision
from schemas.status import GateDecision
from tasks.costs import CostEstimate, cost_of_running, cost_so_far
from tasks.costs.ledger import Decision, Ledger, Reservation, ReservationStatus, release_note
from tasks.jobs import JobHandle, TrainingResult
from tasks.jobs.backends import jobs_running_seconds
from tasks.reporting.status import publish_gate
from tasks.suspension import wait_for_input

logger = logging.getLogger(__name__)

LEDGER_URL_ENV = "LMFT_LEDGER_URL"
HOLD_MARGIN_SECONDS = 1800
"""How long a hold outlives its job's timeout: queueing before the job starts, the Hub upload after."""


class ApprovalRejected(RuntimeError):
    """The run was rejected, or nobody decided before the approval timeout."""


def ledger_for(policy: BudgetPolicy | None) -> Ledger:
    """The ledger of `policy` (its `ledger_url`), else `$LMFT_LEDGER_URL`, else SQLite in `$LMFT_HOME`."""
    url = policy.ledger_url.get_secret_value() if policy is not None and policy.ledger_url else None
    return Ledger(url or os.environ.get(LEDGER_URL_ENV) or None)


def is_free(estimate: CostEstimate) -> bool:
    return estimate.high_usd == 0 and estimate.price_per_hour == 0


def needs_approval(estimate: CostEstimate, policy: BudgetPolicy) -> bool:
    """Whether a human must approve the run: every run under `require_approval_for_all_runs`, else above the threshold."""
    return policy.require_approval_for_all_runs or estimate.high_usd > policy.approval_threshold_usd


def release_holds_of_ended_runs(ledger: Ledger) -> list[Reservation]:
    """Release the holds of runs that ended while they waited for approval; return them.

    A suspended run has no process, so no hook of ours sees it end: Prefect's server fails it
    at the approval timeout, or someone cancels it. Past its approval deadline the hold is
    released as a timeout, otherwise with the state the run ended in. Runs still waiting (or
    resumed and queued for a worker) keep their hold.
    """
    waiting = {
        r.flow_run_id: r
        for r in ledger.entries()
        if r.status is ReservationStatus.AWAITING_APPROVAL and r.flow_run_id
    }
    if not waiting:
        return []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(i) for i in waiting]))
        )
    released = []
    for run in runs:
        state, reservation = run.state, waiting[str(run.id)]
        if state is None or not state.is_final():
            continue
        deadline = reservation.approval_deadline
        if state.is_failed() and deadline is not None and datetime.now(UTC) >= deadline:
            waited = round((deadline - reservation.created_at).total_seconds())
            closed = ledger.decide(
                reservation.id, decision=Decision.TIMED_OUT, note=f"no decision within {waited} s"
            )
        else:
            note = f"flow run {state.name} while waiting for approval: {state.message or ''}"
            closed = ledger.release(reservation.id, note=note[:500])
        released.append(closed)
    return released


LEDGER_TIMEOUT_SECONDS = 300
"""A ledger write waits for the ledger lock (SQLite's busy timeout is 120 s) or a remote PostgreSQL."""


def hold_seconds(estimate: CostEstimate, policy: BudgetPolicy) -> float | None:
    """How long the run's hold may count against the budget before it expires.

    The job's timeout (the Hugging Face job is killed then, so nothing is billed after it) plus
    `HOLD_MARGIN_SECONDS`, plus the approval timeout when the run waits for an approval. A run
    with no timeout (the free local backend) holds until it settles.
    """
    if estimate.timeout_seconds is None:
        return None
    waiting = policy.approval_timeout_seconds if needs_approval(estimate, policy) else 0
    return estimate.timeout_seconds + HOLD_MARGIN_SECONDS + waiting


@task(name="reserve-budget", timeout_seconds=LEDGER_TIMEOUT_SECONDS)
def reserve_budget(
    estimate: CostEstimate, *, run_key: str, policy_name: str = BUDGET_BLOCK_NAME
) -> Reservation:
    """Hold the run's high estimate in the ledger, or fail with the figures."""
    policy = load_budget_policy(policy_name)
    ledger = ledger_for(policy)
    for closed in release_holds_of_ended_runs(ledger):
        get_run_logger().info(
            "budget: released the hold of %s (%s)", closed.run_key, closed.note or closed.status
        )
    reservation = ledger.reserve(
        run_key=run_key,
        backend=estimate.backend.value,
        hardware=estimate.hardware,
        price_per_hour=estimate.price_per_hour,
        expected_usd=estimate.expected_usd,
        high_usd=estimate.high_usd,
        monthly_limit_usd=policy.monthly_limit_usd,
        per_job_max_usd=policy.per_job_max_usd,
        needs_approval=needs_approval(estimate, policy),
        approval_timeout_seconds=policy.approval_timeout_seconds,
        flow_run_id=str(current_flow_run.id) if current_flow_run.id else None,
        hold_seconds=hold_seconds(estimate, policy),
    )
    get_run_logger().info(
        "budget: holding $%.2f for %s on %s (%s)",
        reservation.reserved_usd,
        run_key,
        estimate.hardware,
        reservation.decision.value,
    )
    return reservation


@task(name="record-approval", timeout_seconds=LEDGER_TIMEOUT_SECONDS)
def record_approval(
    reservation: Reservation, decision: ApprovalDecision, *, policy_name: str = BUDGET_BLOCK_NAME
) -> Reservation:
    """Record who approved or rejected the run, and their note; a rejection releases the hold."""
    ledger = ledger_for(load_budget_policy(policy_name))
    verdict = Decision.APPROVED if decision.approved else Decision.REJECTED
    return ledger.decide(
        reservation.id, decision=verdict, approver=decision.approver, note=decision.note
    )


def approval_form(
    estimate: CostEstimate, reservation: Reservation, policy: BudgetPolicy
) -> type[ApprovalDecision]:
    """The `ApprovalDecision` form, its description showing the estimate and the budget; no choice is preset."""
    if is_free(estimate):
        title = f"## Approve a free training run on the {estimate.backend.value} backend?"
    else:
        title = f"## Approve a training run of up to ${estimate.high_usd:.2f}?"
    if policy.require_approval_for_all_runs:
        why = "The budget policy requires an approval for every run (`require_approval_for_all_runs`)."
    else:
        why = f"The high estimate is above the approval threshold (${policy.approval_threshold_usd:.2f})."
    description = (
        f"{title}\n\n{why} "
        f"${reservation.reserved_usd:.2f} is held in the budget until you decide; with no decision in "
        f"{policy.approval_timeout_seconds} s the run is rejected.\n\n{estimate.markdown()}\n"
    )
    return ApprovalDecision.with_initial_data(description=description)


def gate_budget(
    estimate: CostEstimate,
    *,
    run_key: str,
    policy_name: str = BUDGET_BLOCK_NAME,
    poll_interval: int = 10,
) -> Reservation | None:
    """Let the run through the budget, or raise before anything is spent.

    Free runs (the local backend) pass without a ledger entry, and need no policy, unless the
    saved policy has `require_approval_for_all_runs`: then they hold $0 in the ledger and wait
    for an approval like a paid run. Paid runs need a saved `BudgetPolicy`; over the monthly
    limit or the per-job maximum they fail with the figures; above the approval threshold (or
    under `require_approval_for_all_runs`) the flow run waits for an `ApprovalDecision` —
    suspended when it runs from a deployment, paused in place otherwise — and a timeout is a
    rejection; otherwise they are approved automatically. Every decision is recorded in the
    ledger.
    """
    try:
        policy = load_budget_policy(policy_name)
    except BudgetPolicyMissing:
        if is_free(estimate):
            publish_gate(GateDecision.NOT_REQUIRED)
            return None
        raise
    if is_free(estimate) and not policy.require_approval_for_all_runs:
        publish_gate(GateDecision.NOT_REQUIRED)
        return None
    settle_ended_runs(ledger_for(policy))
    reservation = reserve_budget(estimate, run_key=run_key, policy_name=policy_name)
    if reservation.status is ReservationStatus.APPROVED:
        publish_gate(GateDecision.NOT_REQUIRED, reserved_usd=reservation.reserved_usd)
        return reservation
    log = get_run_logger()
    log.info(
        "budget: waiting up to %ss for approval of $%.2f (high estimate)",
        policy.approval_timeout_seconds,
        estimate.high_usd,
    )
    publish_gate(
        GateDecision.AWAITING_APPROVAL,
        reserved_usd=reservation.reserved_usd,
        timeout_seconds=policy.approval_timeout_seconds,
    )
    try:
        decision = wait_for_input(
            approval_form(estimate, reservation, policy),
            key=f"approve-{reservation.id}",
            timeout=policy.approval_timeout_seconds,
            poll_interval=poll_interval,
        )
    except FlowPauseTimeout:  # paused in place; a suspended run is failed by Prefect's server
        # The flow run is still paused, so no task may run: write to the ledger directly.
        ledger_for(policy).decide(
            reservation.id,
            decision=Decision.TIMED_OUT,
            note=f"no decision within {policy.approval_timeout_seconds} s",
        )
        publish_gate(
            GateDecision.TIMED_OUT, note=f"no decision within {policy.approval_timeout_seconds} s"
        )
        raise ApprovalRejected(
            f"budget: nobody approved the ${estimate.high_usd:.2f} run within {policy.approval_timeout_seconds} s; "
            "it was not started and its hold was released"
        ) from None
    reservation = record_approval(reservation, decision, policy_name=policy_name)
    verdict = GateDecision.APPROVED if decision.approved else GateDecision.REJECTED
    publish_gate(verdict, approver=decision.approver, note=decision.note)
    who = decision.approver or "an anonymous approver"
    if decision.approved and not reservation.is_open:  # released meanwhile: do not start
        raise ApprovalRejected(
            f"budget: the hold of this run was released before {who}'s decision arrived "
            f"({reservation.note}); the ${estimate.high_usd:.2f} run was not started"
        )
    if not decision.approved:
        raise ApprovalRejected(
            f"budget: {who} rejected the ${estimate.high_usd:.2f} run: {decision.note or 'no note'}"
        )
    log.info("budget: %s approved the run: %s", who, decision.note or "no note")
    return reservation


@task(name="record-job-start", timeout_seconds=LEDGER_TIMEOUT_SECONDS)
def record_job_start(
    reservation: Reservation | None, handle: JobHandle, *, policy_name: str = BUDGET_BLOCK_NAME
) -> Reservation | None:
    """Note in the ledger when the paid job was submitted: from then on a failure is billed (its
    running time as the backend reports it; the time since submission when it cannot be read)."""
    if reservation is None:
        return None
    return ledger_for(load_budget_policy(policy_name)).mark_started(
        reservation.id, handle.submitted_at
    )


@task(
    name="settle-budget",
    retries=2,
    retry_delay_seconds=[2, 10],
    timeout_seconds=LEDGER_TIMEOUT_SECONDS,
)
def settle_budget(
    reservation: Reservation | None,
    result: TrainingResult,
    *,
    finished_at: datetime | None = None,
    policy_name: str = BUDGET_BLOCK_NAME,
) -> Reservation | None:
    """Turn the run's hold into its actual cost: the job's running time × the flavor's price."""
    if reservation is None:
        return None
    if result.running_seconds is not None:
        actual = cost_of_running(reservation.price_per_hour, result.running_seconds)
    else:  # a backend that reports no running time: bill from submission (an upper bound)
        actual = cost_so_far(reservation.price_per_hour, result.handle.submitted_at, finished_at)
    settled = ledger_for(load_budget_policy(policy_name)).settle(reservation.id, actual)
    get_run_logger().info(
        "budget: the run cost $%.2f (estimated $%.2f)", actual, reservation.expected_usd
    )
    return settled


@task(
    name="settle-ended-job",
    retries=2,
    retry_delay_seconds=[2, 10],
    timeout_seconds=LEDGER_TIMEOUT_SECONDS,
)
def settle_ended_job(
    reservation: Reservation | None,
    *,
    running_seconds: float | None,
    note: str,
    policy_name: str = BUDGET_BLOCK_NAME,
) -> Reservation | None:
    """Close the hold of a job that ended early (failed, timed out, lost, stopped by the watchdog).

    What it ran is billed (its running time × the price, per started minute); the rest of the
    hold is released. A job resumed from its checkpoint gets a hold of its own.
    """
    if reservation is None:
        return None
    if running_seconds is not None:
        billed = cost_of_running(reservation.price_per_hour, running_seconds)
    elif reservation.job_started_at is not None:  # no running time reported: bill from submission
        billed = cost_so_far(reservation.price_per_hour, reservation.job_started_at)
    else:
        billed = 0.0
    closed = ledger_for(load_budget_policy(policy_name)).release(
        reservation.id, billed_usd=billed, note=note[:500]
    )
    get_run_logger().info("budget: the job that ended early cost $%.2f", billed)
    return closed


def _billed_so_far(
    reservation: Reservation, flow_run_id: str, *, until: datetime | None = None
) -> float:
    """What the run's jobs cost: their running time as the backend reports it (Hugging Face bills
    from RUNNING, not from submission); when that cannot be read, the time from submission until
    `until` (the run's final state: retries spent reading an unreachable backend are not billed)."""
    if reservation.job_started_at is None:
        return 0.0  # no job was submitted
    try:
        seconds = jobs_running_seconds(flow_run_id)
    except Exception as exc:  # the backend cannot be read now: bill the upper bound, and say so
        logger.warning(
            "could not read the running time of the jobs of flow run %s (%s); billing since submission",
            flow_run_id,
            type(exc).__name__,
        )
        seconds = None
    if seconds is None:
        return cost_so_far(reservation.price_per_hour, reservation.job_started_at, until)
    return cost_of_running(reservation.price_per_hour, seconds)


def release_budget_of_flow_run(flow, flow_run, state) -> None:
    """Flow-run hook (failure, cancellation, crash): release the run's open holds, keeping billed time."""
    try:
        ledger = ledger_for(load_budget_policy())
    except BudgetPolicyMissing:
        return  # without a policy no paid run got through the gate, so nothing is held
    except BudgetPolicyUnavailable as exc:
        logger.error(
            "flow run %s %s: could not release its budget hold: %s", flow_run.id, state.name, exc
        )
        return
    for reservation in ledger.entries(flow_run_id=str(flow_run.id)):
        if not reservation.is_open:
            continue
        billed = _billed_so_far(reservation, str(flow_run.id), until=state.timestamp)
        ledger.release(
            reservation.id,
            billed_usd=billed,
            note=f"flow run {state.name}: {state.message or ''}"[:500],
            closed_by="flow run hook",
        )
        logger.warning(
            "flow run %s %s: released the budget hold of %s (billed $%.2f)",
            flow_run.id,
            state.name,
            reservation.run_key,
            billed,
        )


def _billed(reservation: Reservation, until: datetime | None) -> float:
    """What the run's job cost until `until`: nothing if it never started."""
    if reservation.job_started_at is None:
        return 0.0
    return cost_so_far(reservation.price_per_hour, reservation.job_started_at, until)


def _flow_run_state(client, flow_run_id: str):
    """The run's state in Prefect; None when this Prefect API does not know the run."""
    try:
        return client.read_flow_run(uuid.UUID(flow_run_id)).state
    except (ObjectNotFound, ValueError):
        return None


def settle_ended_runs(ledger: Ledger, *, now: datetime | None = None) -> list[Reservation]:
    """Release the open holds that nobody will settle any more; return them.

    A hold is released when its flow run reached a final state in Prefect without settling it
    (the process was killed, a hook failed: billed up to the state's time if the job started), or
    when it expired (billed up to its expiry if the job started). Holds of runs this Prefect API
    does not know, and of runs still going, are left alone until they expire. Idempotent: the
    gate calls it before every reservation, the `settle-ended-runs` flow after every run.
    """
    now = now or datetime.now(UTC)
    # Holds waiting for an approval that timed out are recorded as timeouts first.
    released: list[Reservation] = release_holds_of_ended_runs(ledger)
    holds = ledger.open_entries()
    if not holds:
        return released
    with get_client(sync_client=True) as client:
        for hold in holds:
            if hold.is_expired(now):
                released.append(
                    ledger.release(
                        hold.id,
                        billed_usd=_billed(hold, hold.expires_at),
                        note=f"expired at {hold.expires_at:%Y-%m-%d %H:%M} UTC: its run never settled it",
                        closed_by="reconciler",
                    )
                )
                continue
            state = _flow_run_state(client, hold.flow_run_id) if hold.flow_run_id else None
            if state is None or not state.is_final():
                continue
            released.append(
                ledger.release(
                    hold.id,
                    billed_usd=_billed(hold, state.timestamp),
                    note=f"flow run ended {state.name} without settling: {state.message or ''}"[
                        :500
                    ],
                    closed_by="reconciler",
                )
            )
    for hold in released:
        logger.warning(
            "budget: released the hold of %s (%s; billed $%.2f)",
            hold.run_key,
            hold.note,
            hold.actual_usd or 0.0,
        )
    return released


def release_holds_by_hand(
    target: str, *, operator: str, reason: str, policy_name: str = BUDGET_BLOCK_NAME
) -> list[Reservation]:
    """Release the open holds of `target` (a flow run id, a reservation id or a run key), audited.

    What the job already ran is kept as spend; the ledger records who released the hold and why,
    and a `lmft.budget.hold.released` event goes to Prefect's event log.
    """
    from prefect.events import emit_event

    ledger = ledger_for(load_budget_policy(policy_name))
    holds = [h for h in ledger.open_entries() if target in (h.id, h.flow_run_id, h.run_key)]
    released = []
    for hold in holds:
        closed = ledger.release(
            hold.id,
            billed_usd=_billed(hold, None),
            note=release_note(operator, reason),
            closed_by=f"operator {operator}",
        )
        emit_event(
            event="lmft.budget.hold.released",
            resource={
                "prefect.resource.id": f"lmft.budget.reservation.{hold.id}",
                "prefect.resource.name": hold.run_key,
            },
            related=[
                {
                    "prefect.resource.id": f"prefect.flow-run.{hold.flow_run_id}",
                    "prefect.resource.role": "flow-run",
                }
            ]
            if hold.flow_run_id
            else [],
            payload={
                "operator": operator,
                "reason": reason,
                "released_usd": hold.reserved_usd,
                "billed_usd": closed.actual_usd,
                "month": hold.month,
            },
        )
        released.append(closed)
    return released
