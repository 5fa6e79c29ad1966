"""The run-safety automations and the settle flow clean up after runs whose process is gone."""

from __future__ import annotations

import time
import uuid

import pytest
from prefect import flow
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.events.worker import EventsWorker
from prefect.states import Crashed, Running

from deployments.run_safety import ZOMBIE_AUTOMATION, ensure_run_safety_automations


@flow(name="finetune")
def lost_run() -> None:
    """Stands for a run whose process died: only its flow run record exists."""


def flow_run_in(state) -> uuid.UUID:
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(lost_run)
        client.set_flow_run_state(run.id, state, force=True)
        return run.id


def state_of(run_id: uuid.UUID):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state


@pytest.fixture
def zombie_automation(prefect_server):
    automations = ensure_run_safety_automations(heartbeat_seconds=4)  # crashed after 12 s
    yield automations
    Automation.read(name=ZOMBIE_AUTOMATION).delete()


def test_a_running_run_whose_heartbeats_stop_is_marked_crashed(zombie_automation):
    assert [a.name for a in zombie_automation] == [ZOMBIE_AUTOMATION]  # no settle deployment here
    run_id = flow_run_in(Running())
    emit_event(
        "prefect.flow-run.heartbeat", resource={"prefect.resource.id": f"prefect.flow-run.{run_id}"}
    )
    EventsWorker.drain_all()

    deadline = time.monotonic() + 90
    while not (state := state_of(run_id)).is_final() and time.monotonic() < deadline:
        time.sleep(1)
    assert state.is_crashed() and "no heartbeat for 12 s" in state.message


def test_settle_flow_cancels_the_jobs_and_releases_the_hold_of_a_crashed_run(
    prefect_server, hf_server, tmp_path
):
    from blocks.budget import BudgetPolicy
    from flows.settle_ended_runs import settle_ended_runs
    from tasks.costs.ledger import Ledger, ReservationStatus

    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    BudgetPolicy(
        monthly_limit_usd=10, approval_threshold_usd=10, per_job_max_usd=10, ledger_url=url
    ).save("default", overwrite=True)
    run_id = flow_run_in(Crashed(message="no heartbeat"))
    job = hf_server.create_job(
        hf_server.namespace,
        {
            "command": ["python"],
            "dockerImage": "python:3.12",
            "labels": {"flow_run_id": str(run_id)},
        },
    )
    hf_server.set_stage(job.id, "RUNNING")
    ledger = Ledger(url)
    ledger.reserve(
        run_key="lost",
        backend="hf-jobs",
        hardware="t4-small",
        price_per_hour=0.4,
        expected_usd=5,
        high_usd=10,
        monthly_limit_usd=10,
        per_job_max_usd=10,
        needs_approval=False,
        flow_run_id=str(run_id),
    )

    done = settle_ended_runs(run_id)

    assert hf_server.jobs[job.id].stage == "CANCELED"
    [entry] = ledger.entries()
    assert entry.status is ReservationStatus.RELEASED and entry.closed_by == "reconciler"
    assert any("its jobs were cancelled" in line for line in done)


def test_served_deployments_keep_the_concurrency_limits_of_prefect_yaml():
    from deployments.serve import DEFAULT_LIMIT, served_deployments

    deployments = {d.name: d for d in served_deployments()}
    finetune = deployments["finetune"]
    assert finetune.concurrency_limit == 2
    assert finetune.concurrency_options.collision_strategy == "ENQUEUE"
    assert all((d.concurrency_limit or 0) >= 1 for d in deployments.values())
    assert DEFAULT_LIMIT == 4  # and the process runs at most that many at once
