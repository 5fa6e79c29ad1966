"""Dispatching a workflow run with PyGithub against a local GitHub REST API."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from operations.github_workflows import WorkflowDispatchFailed, WorkflowTarget, dispatch_workflow
from tests.doubles.github_api import github_api


def test_dispatch_posts_ref_and_inputs_with_the_token() -> None:
    with github_api() as github:
        target = WorkflowTarget(
            repository="acme/lmft", ref="main", inputs={"slot": "green"}, api_url=github.url
        )
        dispatch_workflow(target, token=SecretStr("ghs_secret"))
    [call] = github.dispatches
    assert (call.workflow, call.ref, call.inputs) == (
        "prefect-worker.yml",
        "main",
        {"slot": "green"},
    )
    assert call.authorization == "token ghs_secret"


def test_refused_dispatch_says_why_without_the_token() -> None:
    with github_api() as github:
        target = WorkflowTarget(repository="acme/lmft", workflow="missing.yml", api_url=github.url)
        with pytest.raises(WorkflowDispatchFailed, match="HTTP 404") as caught:
            dispatch_workflow(target, token=SecretStr("ghs_secret"))
    assert "ghs_secret" not in str(caught.value)


def test_target_from_actions_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GITHUB_REPOSITORY", raising=False)
    with pytest.raises(ValueError, match="GITHUB_REPOSITORY"):
        WorkflowTarget.from_actions_env(workflow="prefect-worker.yml")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/lmft")
    monkeypatch.setenv("GITHUB_REF_NAME", "release")
    target = WorkflowTarget.from_actions_env(workflow="prefect-worker.yml", inputs={"slot": "blue"})
    assert (target.repository, target.ref, target.inputs) == (
        "acme/lmft",
        "release",
        {"slot": "blue"},
    )
