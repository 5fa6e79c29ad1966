"""The worker keep-alive: drains at its deadline, lets short runs finish, hands long ones over,
and dispatches its successor through (a local server speaking) GitHub's REST API."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL
from pydantic import SecretStr

from operations.github_workflows import WorkflowTarget
from operations.keepalive import KeepaliveReport, KeepaliveSettings, keep_alive
from tests.doubles.github_api import github_api

NAP_FLOW = """
import time
from pathlib import Path
from prefect import flow

@flow
def nap(until: str) -> str:
    while not Path(until).exists():
        time.sleep(0.2)
    return until
"""


class SteppedClock:
    """Real time, plus jumps the test makes: the deadline arrives when the test says so."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def wait_for_state(run_id: UUID, *types: StateType, timeout: float = 180) -> StateType:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(run_id).state
            if state is not None and state.type in types:
                return state.type
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"flow run {run_id} still {state.type if state else None}, wanted {types}"
                )
            time.sleep(0.5)


@pytest.fixture
def nap_deployment(
    tmp_path: Path, prefect_server, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, UUID]:
    """A process work pool and a deployment of a flow that runs until the file `until` exists."""
    from prefect import flow

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # for the worker subprocess
    pool = f"keepalive-{tmp_path.name[-12:].lower().replace('_', '-')}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    (tmp_path / "nap.py").write_text(NAP_FLOW)
    deployment_id = flow.from_source(source=str(tmp_path), entrypoint="nap.py:nap").deploy(
        name="nap", work_pool_name=pool, print_next_steps=False
    )
    return pool, deployment_id


def test_drains_hands_long_run_over_and_dispatches_successor(
    nap_deployment: tuple[str, UUID], tmp_path: Path
) -> None:
    pool, deployment_id = nap_deployment
    short_done, never = tmp_path / "short-done", tmp_path / "never"
    with get_client(sync_client=True) as client:
        short = client.create_flow_run_from_deployment(
            deployment_id, parameters={"until": str(short_done)}
        )
        long = client.create_flow_run_from_deployment(
            deployment_id, parameters={"until": str(never)}
        )
    clock = SteppedClock()
    reports: list[KeepaliveReport] = []
    with github_api() as github:
        settings = KeepaliveSettings(
            pool=pool,
            worker_name="test-worker",
            runtime_seconds=3600,
            drain_seconds=1800,
            poll_seconds=0.2,
            successor=WorkflowTarget(
                repository="acme/lmft", inputs={"slot": "green"}, api_url=github.url
            ),
            successor_token=SecretStr("ghs_dispatch"),
        )
        thread = threading.Thread(target=lambda: reports.append(keep_alive(settings, clock=clock)))
        thread.start()
        try:
            wait_for_state(long.id, StateType.RUNNING)
            wait_for_state(short.id, StateType.RUNNING)
            assert github.dispatches == []

            clock.offset += 1800  # the drain
            deadline = time.monotonic() + 30
            while not github.dispatches and time.monotonic() < deadline:
                time.sleep(0.2)
            with get_client(sync_client=True) as client:
                late = client.create_flow_run_from_deployment(
                    deployment_id, parameters={"until": str(short_done)}
                )
                assert client.read_flow_run(short.id).state.type is StateType.RUNNING
            short_done.touch()  # the short run finishes while the worker drains
            assert (
                wait_for_state(short.id, StateType.COMPLETED, StateType.FAILED, StateType.CRASHED)
                is StateType.COMPLETED
            )
            assert wait_for_state(long.id, StateType.RUNNING) is StateType.RUNNING
            with get_client(sync_client=True) as client:
                long_pid = int(client.read_flow_run(long.id).infrastructure_pid.rpartition(":")[2])

            clock.offset += 1800  # the hand-over
            thread.join(timeout=120)
        finally:
            clock.offset += 7200
            thread.join(timeout=120)

    [report] = reports
    assert report.successor_dispatched and not report.drained_cleanly
    assert report.handed_over == [str(long.id)]
    [call] = github.dispatches
    assert (call.workflow, call.ref, call.inputs) == (
        "prefect-worker.yml",
        "main",
        {"slot": "green"},
    )
    with get_client(sync_client=True) as client:
        handed = client.read_flow_run(long.id).state
        assert handed.type is StateType.SCHEDULED and handed.name == "AwaitingRetry"
        assert (
            client.read_flow_run(late.id).state.type is StateType.SCHEDULED
        )  # taken by no one: the successor's
    assert not process_alive(long_pid)


def process_alive(pid: int, timeout: float = 10) -> bool:
    """True while `pid` runs (a killed child of a killed worker is reaped by init soon after)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.2)
    return True


def test_worker_environment_holds_no_dispatch_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from operations.keepalive import PrefectWorker

    monkeypatch.setenv("GITHUB_TOKEN", "ghs_dispatch")
    worker = PrefectWorker(KeepaliveSettings(runtime_seconds=10, drain_seconds=5))
    assert "GITHUB_TOKEN" not in worker.env and os.environ["GITHUB_TOKEN"] == "ghs_dispatch"


def test_drain_must_come_before_the_hand_over() -> None:
    with pytest.raises(ValueError, match="drain_seconds"):
        KeepaliveSettings(runtime_seconds=60, drain_seconds=60)


def test_scheduled_backstop_starts_no_worker_when_one_is_online(prefect_server) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="backstop", type="process"))
        client.send_worker_heartbeat(
            work_pool_name="backstop", worker_name="gha-blue", heartbeat_interval_seconds=30
        )
    report = keep_alive(
        KeepaliveSettings(pool="backstop", runtime_seconds=10, drain_seconds=5, skip_if_online=True)
    )
    assert report.worker_starts == 0 and "gha-blue" in report.skipped_because


def test_command_line_reads_the_actions_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from operations.keepalive import parse_settings

    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/lmft")
    monkeypatch.setenv("GITHUB_REF_NAME", "main")
    monkeypatch.setenv("GITHUB_TOKEN", "ghs_dispatch")
    settings = parse_settings(
        [
            "--runtime-seconds",
            "120",
            "--drain-seconds",
            "60",
            "--successor-workflow",
            "prefect-worker.yml",
            "--successor-input",
            "slot=green",
        ]
    )
    assert (
        settings.successor.inputs == {"slot": "green"}
        and settings.successor.repository == "acme/lmft"
    )
    assert (
        settings.successor_token.get_secret_value() == "ghs_dispatch"
        and "ghs_dispatch" not in repr(settings)
    )
