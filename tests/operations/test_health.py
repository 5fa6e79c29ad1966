"""Health checks against a real Prefect server: API up or down, workers online or not."""

from __future__ import annotations

import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import SecretStr
from typer.testing import CliRunner

from cli.app import app
from flows.health_check import ServiceUnhealthy, health_check
from operations.github_workflows import WorkflowTarget
from operations.health import check_prefect_health, start_worker_if_missing
from tests.doubles.github_api import github_api


@pytest.fixture
def pool(prefect_server) -> str:
    name = f"health-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))
    return name


def test_no_worker_online_dispatches_the_worker_workflow(pool: str) -> None:
    report = check_prefect_health(pool)
    assert report.api_healthy and report.pool_found and not report.healthy
    assert report.problems == [
        f"no worker online for work pool {pool!r}; start one (the prefect-worker workflow)"
    ]
    with github_api() as github:
        target = WorkflowTarget(repository="acme/lmft", api_url=github.url)
        assert start_worker_if_missing(report, target, token=SecretStr("ghs_x")).worker_dispatched
    assert [d.workflow for d in github.dispatches] == ["prefect-worker.yml"]


def test_worker_heartbeat_makes_the_pool_healthy(pool: str) -> None:
    with get_client(sync_client=True) as client:
        client.send_worker_heartbeat(
            work_pool_name=pool, worker_name="runner-1", heartbeat_interval_seconds=30
        )
    report = check_prefect_health(pool)
    assert report.healthy and report.workers_online == ["runner-1"]
    with github_api() as github:
        target = WorkflowTarget(repository="acme/lmft", api_url=github.url)
        assert not start_worker_if_missing(
            report, target, token=SecretStr("ghs_x")
        ).worker_dispatched
    assert github.dispatches == []
    assert health_check(pool).healthy


def test_flow_fails_with_the_problems(pool: str) -> None:
    with pytest.raises(ServiceUnhealthy, match="no worker online"):
        health_check(pool)


def test_missing_pool_and_unreachable_api_are_named(prefect_server) -> None:
    report = check_prefect_health("no-such-pool")
    assert report.api_healthy and not report.pool_found
    assert "prefect work-pool create no-such-pool" in report.problems[0]
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        down = check_prefect_health("no-such-pool")
    assert not down.api_healthy and "is not healthy" in down.problems[0]


def test_cli_dispatches_and_exits_zero_when_it_started_a_worker(
    pool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with github_api() as github:
        monkeypatch.setenv("GITHUB_TOKEN", "ghs_x")
        monkeypatch.setenv("GITHUB_REPOSITORY", "acme/lmft")
        monkeypatch.setenv("GITHUB_REF_NAME", "main")
        monkeypatch.setenv("GITHUB_API_URL", github.url)
        result = CliRunner().invoke(
            app,
            [
                "health-check",
                "--pool",
                pool,
                "--dispatch",
                "prefect-worker.yml",
                "--dispatch-input",
                "slot=blue",
            ],
        )
    assert result.exit_code == 0, result.output
    assert [d.inputs for d in github.dispatches] == [{"slot": "blue"}]
    assert CliRunner().invoke(app, ["health-check", "--pool", pool]).exit_code == 1
    monkeypatch.delenv("GITHUB_TOKEN")
    missing = CliRunner().invoke(
        app, ["health-check", "--pool", pool, "--dispatch", "prefect-worker.yml"]
    )
    assert missing.exit_code == 2 and "GITHUB_TOKEN" in missing.output
