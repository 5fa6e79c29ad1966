"""Run as a team would: one Prefect server on PostgreSQL, two process workers on one pool, the
budget ledger in the same PostgreSQL. Several `finetune` runs at once stay within the
deployment's concurrency limit and each runs once and trains once; runs that wait for
approval go through the shared ledger once each and it balances; a
worker stopped mid-run the way the Actions keep-alive stops it hands its run to the other,
which skips the steps already done and resumes training from the stopped job's checkpoint.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.flow_runs import resume_flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings

from operations.keepalive import WORKER_LABEL, KeepaliveReport, KeepaliveSettings, keep_alive
from schemas.jobs import JobState
from tasks.costs.ledger import Decision, Ledger, ReservationStatus
from tasks.jobs.local import find_local_jobs, job_dir, local_job_status
from tests.operations.test_keepalive import SteppedClock
from tests.team import (
    TERMINAL,
    Team,
    all_terminal,
    read_runs,
    task_run_states,
    team_server,
    write_chats,
)
from training.train import PROGRESS_PREFIX as PROGRESS
from training.train import STOPPED_PREFIX

pytestmark = pytest.mark.slow

RUNS = 4
RUN_TIMEOUT_SECONDS = 1500


def approve_paused(runs: list[FlowRun]) -> None:
    """The team lead: approve each run waiting at the budget gate (the policy asks for every run)."""
    for run in runs:
        if run.state is not None and run.state.type is StateType.PAUSED:
            resume_flow_run(
                run.id, run_input={"decision": "approve", "approver": "team-lead", "note": "go"}
            )


def drive_until(
    ids: list[UUID],
    done: Callable[[list[FlowRun]], bool],
    team: Team,
    timeout: float = RUN_TIMEOUT_SECONDS,
) -> list[FlowRun]:
    """Approve what waits, until `done(runs)`; fail with the workers' logs after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        runs = read_runs(ids)
        if done(runs):
            return runs
        if time.monotonic() > deadline:
            states = {str(r.id): r.state.name if r.state else None for r in runs}
            raise AssertionError(f"runs not done in {timeout} s: {states}\n{team.diagnostics()}")
        approve_paused(runs)
        time.sleep(1)


def most_at_once(ids: list[UUID]) -> int:
    """The most runs that held a concurrency slot (from Pending to a final state) at one time."""
    events: list[tuple[float, int]] = []
    with get_client(sync_client=True) as client:
        for run_id in ids:
            start = None
            for state in client.read_flow_run_states(run_id):
                if state.type is StateType.PENDING and start is None:
                    start = state.timestamp.timestamp()
                elif state.type in TERMINAL and start is not None:
                    events += [(start, 1), (state.timestamp.timestamp(), -1)]
                    start = None
    held = peak = 0
    for _, change in sorted(events):  # at equal times a release (-1) sorts before an acquire
        held += change
        peak = max(peak, held)
    return peak


@pytest.fixture(scope="module")
def chats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_chats(tmp_path_factory.mktemp("team-data") / "chats.jsonl")


@pytest.fixture(scope="module")
def team(postgres, lmft_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    """The server on PostgreSQL, and a budget ledger in PostgreSQL too."""
    work = tmp_path_factory.mktemp("team")
    prefect_db = postgres.database_url(postgres.create_database("prefect"), driver="asyncpg")
    with team_server(work, database_url=prefect_db) as team:
        team.ledger_url = postgres.database_url(postgres.create_database("ledger"))
        save_budget_policy(team, approve_every_run=False)
        yield team


def save_budget_policy(team: Team, *, approve_every_run: bool) -> None:
    """`lmft budget set` on the team's server, its ledger in PostgreSQL."""
    team.run(
        "-m", "cli", "budget", "set", "--monthly-limit", "10", "--approval-threshold", "5",
        "--per-job-max", "5", "--ledger-url", team.ledger_url,
        "--require-approval-for-all-runs" if approve_every_run else "--approval-above-threshold-only",
    )  # fmt: skip


def test_runs_at_once_share_two_workers_within_the_limit_each_once(
    team: Team, tiny_llama: Path, chats: Path
) -> None:
    with get_client(sync_client=True) as client:
        limit = client.read_deployment(team.deployment_id).global_concurrency_limit.limit
    assert limit == 2  # prefect.yaml's finetune limit, ENQUEUE: extra runs wait for a slot
    team.start_worker("worker-a")
    team.start_worker("worker-b")
    try:
        ids = [team.submit(f"team-{i}", tiny_llama, chats, steps=1) for i in range(RUNS)]
        runs = drive_until(ids, all_terminal, team)
    finally:
        team.stop_workers()

    assert [r.state.type for r in runs] == [StateType.COMPLETED] * RUNS, team.diagnostics()
    assert most_at_once(ids) <= limit
    with get_client(sync_client=True) as client:
        for run in runs:  # each run was taken once and finished once
            states = [s.type for s in client.read_flow_run_states(run.id)]
            assert states.count(StateType.RUNNING) == 1 and states.count(StateType.COMPLETED) == 1
            assert run.labels.get(WORKER_LABEL) in ("worker-a", "worker-b")
    for run in runs:  # one training job per run: none started twice
        assert len(find_local_jobs({"flow_run_id": str(run.id)})) == 1
    totals = Ledger(team.ledger_url).totals()  # free local runs below the threshold hold nothing
    assert totals.open_reservations == 0 and totals.reserved_usd == 0


def test_runs_waiting_for_approval_go_through_the_shared_ledger_once_each(
    team: Team, tiny_llama: Path, chats: Path
) -> None:
    # Every run waits for a person: free local runs too hold $0 in the ledger and settle.
    # (A run paused for approval gives its deployment concurrency slot back, and a resumed run
    # goes on without taking one again: Prefect's rule, see docs/operations.md.)
    save_budget_policy(team, approve_every_run=True)
    team.start_worker("worker-a")
    team.start_worker("worker-b")
    try:
        ids = [team.submit(f"approved-{i}", tiny_llama, chats, steps=1) for i in range(2)]
        runs = drive_until(ids, all_terminal, team)
    finally:
        team.stop_workers()
    assert [r.state.type for r in runs] == [StateType.COMPLETED] * 2, team.diagnostics()
    ledger = Ledger(team.ledger_url)
    entries = [e for e in ledger.entries() if e.flow_run_id in {str(i) for i in ids}]
    assert sorted(e.flow_run_id for e in entries) == sorted(str(i) for i in ids)
    assert all(e.status is ReservationStatus.SETTLED for e in entries)
    assert all(e.decision is Decision.APPROVED and e.approver == "team-lead" for e in entries)
    totals = ledger.totals()
    assert totals.open_reservations == 0 and totals.reserved_usd == 0


def test_a_stopped_workers_run_is_finished_by_the_other_from_its_checkpoint(
    team: Team, tiny_llama: Path, chats: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_WORKER_QUERY_SECONDS"):
        monkeypatch.setenv(key, team.env[key])  # the keep-alive's worker inherits this environment
    save_budget_policy(team, approve_every_run=True)  # so that the run has a ledger entry
    run_id = team.submit("team-handover", tiny_llama, chats, steps=20)
    clock = SteppedClock()
    reports: list[KeepaliveReport] = []
    settings = KeepaliveSettings(
        pool=team.pool,
        worker_name="runner-1",
        runtime_seconds=3600,
        drain_seconds=1800,
        poll_seconds=0.2,
    )

    def keep_runner_1_alive() -> None:
        # A thread starts with no Prefect settings context: give it the team's server.
        with temporary_settings({PREFECT_API_URL: team.env["PREFECT_API_URL"]}):
            reports.append(keep_alive(settings, clock=clock))

    thread = threading.Thread(target=keep_runner_1_alive)
    thread.start()
    try:

        def training(runs: list[FlowRun]) -> bool:
            # Past its first step: train.py's SIGTERM handler is in place.
            jobs = find_local_jobs({"flow_run_id": str(run_id)})
            return (
                bool(jobs)
                and local_job_status(jobs[0]).state is JobState.RUNNING
                and PROGRESS in (job_dir(jobs[0].job_id) / "train.log").read_text()
            )

        drive_until([run_id], training, team)
        [first] = find_local_jobs({"flow_run_id": str(run_id)})
        team.start_worker("runner-2")  # the successor the keep-alive would have dispatched
        clock.offset += (
            3600  # runner-1's hand-over time, mid-training: its run goes back to the queue
        )
        thread.join(timeout=300)
        [done] = drive_until([run_id], all_terminal, team)
    finally:
        clock.offset += 7200
        thread.join(timeout=300)
        team.stop_workers()

    [report] = reports
    assert report.handed_over == [str(run_id)]
    assert done.state.type is StateType.COMPLETED, team.diagnostics()
    assert done.labels.get(WORKER_LABEL) == "runner-2"
    # Two jobs: the first stopped with a checkpoint at the hand-over, the second resumed from it.
    resumed, stopped = find_local_jobs({"flow_run_id": str(run_id)})
    assert stopped == first
    first_log = (job_dir(first.job_id) / "train.log").read_text()
    assert first_log.count(PROGRESS + '{"step": 1,') == 1
    [stop_line] = [line for line in first_log.splitlines() if line.startswith(STOPPED_PREFIX)]
    stop = json.loads(stop_line.removeprefix(STOPPED_PREFIX))
    assert stop["resumable"] is True and 1 <= stop["step"] < 20
    steps = [
        json.loads(line.removeprefix(PROGRESS))["step"]
        for line in (job_dir(resumed.job_id) / "train.log").read_text().splitlines()
        if line.startswith(PROGRESS) and '"loss"' in line
    ]
    assert steps[0] == stop["step"] + 1 and steps[-1] == 20  # not restarted from zero
    # What the first worker finished was not done again. The flow ran four times from the top:
    # first; after the approval (a suspended run starts over); on runner-2 after the hand-over;
    # after the approval of the resumed job's budget. Done once, then read from the cache.
    again = {
        "prepare-base-model": ["Cached", "Cached", "Cached", "Completed"],
        "validate-dataset": ["Cached", "Cached", "Cached", "Completed"],
    }
    states = task_run_states(
        run_id, until=lambda found: all(found.get(name) == want for name, want in again.items())
    )
    assert {name: states.get(name) for name in again} == again
    # One ledger entry per job, both approved by the team lead: the first job's hold released
    # after it was settled for what it ran, the resumed job's settled.
    entries = [e for e in Ledger(team.ledger_url).entries() if e.flow_run_id == str(run_id)]
    assert sorted(e.status for e in entries) == sorted(
        [ReservationStatus.RELEASED, ReservationStatus.SETTLED]
    ), entries
    assert all(e.approver == "team-lead" for e in entries)
