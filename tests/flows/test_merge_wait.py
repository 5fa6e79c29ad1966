"""A deploy to serverless-llm that waits for its pull request's merge holds no worker meanwhile.

Against a real `prefect server start` (tests/flows/conftest.py), the local GitHub API double
backed by a bare repository shaped like serverless-llm, and a local model server.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from prefect.deployments import run_deployment

from blocks.serverless_llm import DeployMode
from flows.deploy import deploy
from flows.merge_watch import merge_watch
from schemas.serving import ServeStatus
from tasks.serving.serverless_llm.models_file import read_entries
from tests.doubles.github_server import FakeGitHub, FakeModelServer
from tests.doubles.serverless_llm_repo import git
from tests.flows.approval_worker import DEPLOY
from tests.flows.conftest import Server, wait_for_state

# The bare repository, GitHub double and model server of the serverless-llm deploy tests.
from tests.tasks.serving.serverless_llm.test_deploy import (
    GGUF,
    target_for,
    world,  # noqa: F401 (a fixture)
)


def save_target(bare: Path, hub: FakeGitHub, model_server: FakeModelServer) -> str:
    """A saved ServerlessLLMTarget that opens a pull request and waits for its merge."""
    name = f"sllm-{uuid.uuid4().hex[:8]}"
    target = target_for(
        bare,
        hub,
        model_server,
        mode=DeployMode.PULL_REQUEST,
        wait_for_merge=True,
        merge_timeout_seconds=600,
    )
    target.save(name)
    return name


def test_a_deploy_waits_for_its_merge_suspended_and_the_watcher_resumes_it(
    server: Server, request: pytest.FixtureRequest
):
    bare, hub, model_server = request.getfixturevalue("world")
    target = save_target(bare, hub, model_server)
    if not any(w.poll() is None for w in server.workers):
        server.start_worker()
    run = run_deployment(
        DEPLOY, parameters={"gguf_path": GGUF, "name": "pirate", "target": target}, timeout=0
    )
    state = wait_for_state(run.id, lambda s: s.is_paused(), timeout=300)
    assert state.name == "Suspended"
    assert hub.pulls[0]["state"] == "open" and hub.dispatches == []  # nothing served yet
    assert "pirate" not in read_entries(git(bare, "show", "main:config/models.py"))

    assert merge_watch() == []  # not merged yet: it keeps waiting
    assert wait_for_state(run.id, lambda s: True).name == "Suspended"
    hub.merge(1)
    assert merge_watch() == [str(run.id)]  # the scheduled watcher

    final = wait_for_state(run.id, lambda s: s.is_final(), timeout=300)
    assert final.is_completed(), final.message
    served = final.result()
    assert served.status is ServeStatus.SERVING and served.smoke.reply == "Paris."
    assert served.commit_sha == git(bare, "rev-parse", "main") and served.build_run_url
    assert served.pull_request_url == "https://github.example/acme/serverless-llm/pull/1"
    assert [d["ref"] for d in hub.dispatches] == ["main"]  # served from the merged base branch


def test_a_deploy_called_in_process_polls_for_the_merge(
    server: Server, request: pytest.FixtureRequest
):
    """`lmft deploy` and scripts run the flow in-process: no deployment to reschedule, so the
    flow polls the pull request instead of suspending."""
    import threading
    import time

    bare, hub, model_server = request.getfixturevalue("world")
    target = save_target(bare, hub, model_server)

    def maintainer() -> None:
        while not hub.pulls:
            time.sleep(0.05)
        hub.merge(1)

    threading.Thread(target=maintainer, daemon=True).start()
    served = deploy(GGUF, "pirate", target)
    assert served.status is ServeStatus.SERVING and served.build_run_url
    assert [d["ref"] for d in hub.dispatches] == ["main"]
