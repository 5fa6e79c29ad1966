"""Deploying to a local bare repository shaped like serverless-llm, with the real PyGithub
client talking to a local server that speaks GitHub's REST API."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
from prefect_github import GitHubCredentials

from blocks.serverless_llm import DeployMode, ServerlessLLMTarget
from schemas.serving import ServeStatus
from tasks.serving.serverless_llm import DeploymentFailed, ModelsFileError, deploy_to_serverless_llm
from tasks.serving.serverless_llm.git_repo import GitClone, GitError
from tasks.serving.serverless_llm.models_file import read_entries
from tests.doubles.github_server import FakeGitHub, FakeModelServer
from tests.doubles.serverless_llm_repo import MODELS_PY, git, make_serverless_repo

GGUF = "hf://me/pirate-GGUF/pirate-Q4_K_M.gguf"
TOKEN = "ghp_test_token_123"


@pytest.fixture
def world(tmp_path: Path):
    bare = make_serverless_repo(tmp_path)
    model_server = FakeModelServer()
    with FakeGitHub(bare, token=TOKEN) as hub:
        yield bare, hub, model_server
    model_server.close()


def target_for(
    bare: Path, hub: FakeGitHub, server: FakeModelServer, **changes
) -> ServerlessLLMTarget:
    values = dict(
        repository=hub.repository,
        credentials=GitHubCredentials(token=TOKEN),
        api_base_url=hub.base_url,
        clone_url=str(bare),
        health_url_pattern=server.url + "/health",
        mode=DeployMode.PUSH,
        poll_seconds=0.05,
        health_timeout_seconds=5,
        build_timeout_seconds=5,
        merge_timeout_seconds=10,
    )
    return ServerlessLLMTarget(**{**values, **changes})


def main_file(bare: Path, path: str) -> str:
    return git(bare, "show", f"main:{path}")


def test_push_mode_adds_then_redeploys_idempotently_then_updates(world):
    bare, hub, server = world
    target = target_for(bare, hub, server, build_workflow=None)

    first = deploy_to_serverless_llm(
        GGUF, "pirate", target, target_name="sllm", lineage={"base_model": "smollm2"}
    )
    assert first.status is ServeStatus.SERVING and first.smoke.reply == "Paris."
    assert first.models_entry_changed and first.commit_sha == git(bare, "rev-parse", "main")
    entries = read_entries(main_file(bare, "config/models.py"))
    assert (
        entries["pirate"]["port"] == 8102 and entries["pirate"]["hf_file"] == "pirate-Q4_K_M.gguf"
    )
    assert "- pirate" in main_file(bare, ".github/workflows/inference.yml")
    frontend = json.loads(main_file(bare, "app/chat/frontend/public/models.json"))
    assert "pirate" in [m["key"] for m in frontend["models"]]
    assert hub.dispatches[-1] == {
        "ref": "main",
        "inputs": {"model": "pirate"},
        "return_run_details": True,
    }
    assert server.requests[-1]["model"] == "pirate"

    again = deploy_to_serverless_llm(
        GGUF, "pirate", target, target_name="sllm", lineage={"base_model": "smollm2"}
    )
    assert not again.models_entry_changed and again.commit_sha == first.commit_sha
    assert git(bare, "rev-list", "--count", "main") == "2"

    updated = deploy_to_serverless_llm(
        GGUF,
        "pirate",
        target.model_copy(update={"n_ctx": 2048}),
        target_name="sllm",
        lineage={"base_model": "smollm2"},
    )
    entries = read_entries(main_file(bare, "config/models.py"))
    assert (
        updated.models_entry_changed
        and entries["pirate"]["n_ctx"] == 2048
        and entries["pirate"]["port"] == 8102
    )
    assert list(entries) == ["chat", "qwen", "phi", "pirate"]


def test_pull_request_mode_opens_a_pr_and_smoke_tests_the_branch(world):
    bare, hub, server = world
    target = target_for(bare, hub, server, mode=DeployMode.PULL_REQUEST)
    deployment = deploy_to_serverless_llm(
        GGUF,
        "pirate",
        target,
        target_name="sllm",
        quality_report_md="| variant | agreement |\n|---|---|\n| Q4_K_M | 0.93 |",
        lineage={"dataset": "pirate.jsonl"},
    )
    assert deployment.status is ServeStatus.AWAITING_MERGE
    assert deployment.pull_request_url == "https://github.example/acme/serverless-llm/pull/1"
    pull = hub.pulls[0]
    assert pull["head"]["ref"] == "lmft/deploy-pirate" and pull["base"]["ref"] == "main"
    assert "| Q4_K_M | 0.93 |" in pull["body"] and '"dataset": "pirate.jsonl"' in pull["body"]
    assert "pirate" not in read_entries(
        main_file(bare, "config/models.py")
    )  # main untouched until merged
    assert hub.dispatches[-1]["ref"] == "lmft/deploy-pirate"
    branch_head = git(bare, "rev-parse", "lmft/deploy-pirate")

    # Re-deploying the same model reuses the branch and the PR.
    again = deploy_to_serverless_llm(GGUF, "pirate", target, target_name="sllm")
    assert again.pull_request_url == deployment.pull_request_url and len(hub.pulls) == 1
    assert git(bare, "rev-parse", "lmft/deploy-pirate") == branch_head


def test_pull_request_mode_waits_for_merge_and_build(world):
    bare, hub, server = world
    target = target_for(bare, hub, server, mode=DeployMode.PULL_REQUEST, wait_for_merge=True)

    def maintainer() -> None:
        while not hub.pulls:
            time.sleep(0.05)
        hub.merge(1)

    threading.Thread(target=maintainer, daemon=True).start()
    deployment = deploy_to_serverless_llm(GGUF, "pirate", target, target_name="sllm")
    assert deployment.status is ServeStatus.SERVING
    assert deployment.commit_sha == git(bare, "rev-parse", "main")
    assert deployment.build_run_url and hub.dispatches[-1]["ref"] == "main"
    assert "pirate" in read_entries(main_file(bare, "config/models.py"))


def test_failed_smoke_closes_the_pull_request(world):
    bare, hub, server = world
    server.healthy = False
    target = target_for(bare, hub, server, mode=DeployMode.PULL_REQUEST)
    with pytest.raises(DeploymentFailed, match="rolled back.*HTTP 500"):
        deploy_to_serverless_llm(GGUF, "pirate", target, target_name="sllm")
    assert hub.pulls[0]["state"] == "closed" and not hub.pulls[0]["merged"]
    assert "smoke test" in hub.comments[0]["body"]
    assert hub.runs[-1]["conclusion"] == "cancelled"
    assert (
        subprocess.run(
            ["git", "rev-parse", "--verify", "lmft/deploy-pirate"], cwd=bare, capture_output=True
        ).returncode
        != 0
    )


def test_failed_smoke_in_push_mode_restores_the_previous_entry(world):
    bare, hub, server = world
    target = target_for(bare, hub, server, build_workflow=None)
    deploy_to_serverless_llm(GGUF, "pirate", target, target_name="sllm")
    before = main_file(bare, "config/models.py")
    server.healthy = False
    with pytest.raises(DeploymentFailed):
        deploy_to_serverless_llm(
            "hf://me/pirate-GGUF/pirate-v2.gguf", "pirate", target, target_name="sllm"
        )
    assert main_file(bare, "config/models.py") == before
    assert git(bare, "log", "-1", "--format=%s", "main") == "Roll back pirate: smoke test failed"


def test_unparsable_models_file_pushes_nothing(tmp_path):
    bare = make_serverless_repo(
        tmp_path, models_py=MODELS_PY.replace("MODELS: dict[str, ModelConfig] = {", "MODELS = {{")
    )
    server = FakeModelServer()
    with FakeGitHub(bare, token=TOKEN) as hub:
        target = target_for(bare, hub, server, mode=DeployMode.PULL_REQUEST)
        before = git(bare, "for-each-ref")
        with pytest.raises(ModelsFileError, match="not valid Python"):
            deploy_to_serverless_llm(GGUF, "pirate", target, target_name="sllm")
        assert git(bare, "for-each-ref") == before and hub.pulls == [] and hub.dispatches == []
    server.close()


def test_port_collision_in_the_repository_pushes_nothing(tmp_path):
    bare = make_serverless_repo(tmp_path, models_py=MODELS_PY.replace("port=8101", "port=8100"))
    server = FakeModelServer()
    with FakeGitHub(bare, token=TOKEN) as hub:
        target = target_for(bare, hub, server)
        with pytest.raises(ModelsFileError, match="share port 8100"):
            deploy_to_serverless_llm(GGUF, "pirate", target, target_name="sllm")
        assert git(bare, "rev-list", "--count", "main") == "1" and hub.dispatches == []
    server.close()


def test_bad_names_never_reach_git_or_github(world):
    bare, hub, server = world
    target = target_for(bare, hub, server)
    for name in ("pi-rate", "$(touch x)", "Main"):
        with pytest.raises(ValueError, match="model name"):
            deploy_to_serverless_llm(GGUF, name, target, target_name="sllm")
    with pytest.raises(ValueError, match="base_branch"):
        ServerlessLLMTarget(repository="a/b", base_branch="main;rm")
    with pytest.raises(ValueError, match="placeholders"):
        ServerlessLLMTarget(repository="a/b", health_url_pattern="https://{model}.x.org/health")
    with pytest.raises(ValueError, match="workflow"):
        ServerlessLLMTarget(repository="a/b", inference_workflow="../../evil.yml")
    with pytest.raises(ValueError, match="owner/name"):
        ServerlessLLMTarget(repository="a/b/../c")
    assert hub.dispatches == [] and git(bare, "rev-list", "--count", "main") == "1"


def test_token_never_appears_in_git_errors(tmp_path):
    with pytest.raises(GitError) as caught:
        GitClone.clone("http://127.0.0.1:9/nowhere.git", tmp_path / "c", branch="main", token=TOKEN)
    assert TOKEN not in str(caught.value)
    with pytest.raises(ValueError, match="must not carry credentials"):
        GitClone.clone(f"https://{TOKEN}@github.com/a/b.git", tmp_path / "d", branch="main")
