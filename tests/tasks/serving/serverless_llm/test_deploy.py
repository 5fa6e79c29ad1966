"""Deploying to a local bare repository that behaves like serverless-llm, with the real PyGithub
client talking to a local server that speaks GitHub's REST API and runs its workflows."""

from __future__ import annotations

import json
import subprocess
import sys
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
from tasks.serving.serverless_llm.sync import SyncError
from tests.doubles.github_server import FakeGitHub, FakeModelServer
from tests.doubles.serverless_llm_repo import API_MODELS, MODELS_PY, git, make_serverless_repo

GGUF = "hf://me/pirate-GGUF/pirate-Q4_K_M.gguf"
TOKEN = "ghp_test_token_123"
MODELS_JSON = "app/chat/frontend/public/models.json"


@pytest.fixture
def world(tmp_path: Path):
    bare = make_serverless_repo(tmp_path)
    model_server = FakeModelServer()
    with FakeGitHub(bare, token=TOKEN, model_server=model_server) as hub:
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
        build_timeout_seconds=10,
        merge_timeout_seconds=10,
    )
    return ServerlessLLMTarget(**{**values, **changes})


def main_file(bare: Path, path: str, ref: str = "main") -> str:
    return git(bare, "show", f"{ref}:{path}")


def models_cli(bare: Path, tmp_path: Path, *args: str, ref: str = "main") -> object:
    """`python config/models.py ARGS` on a checkout of `ref`, as the workflows run it."""
    tree = tmp_path / f"checkout-{ref.replace('/', '-')}"
    if not tree.exists():
        git(bare.parent, "clone", "-q", "--branch", ref, str(bare), str(tree))
    done = subprocess.run(
        [sys.executable, "config/models.py", *args],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def test_push_mode_adds_an_entry_the_repository_can_build_and_serve(world, tmp_path):
    bare, hub, server = world
    target = target_for(bare, hub, server)
    api_before = [
        m for m in json.loads(main_file(bare, MODELS_JSON))["models"] if m["type"] == "api"
    ]

    first = deploy_to_serverless_llm(
        GGUF, "pirate", target, target_name="sllm", lineage={"base_model": "smollm2"}
    )
    assert first.status is ServeStatus.SERVING and first.smoke.reply == "Paris."
    assert first.models_entry_changed and first.commit_sha == git(bare, "rev-parse", "main")
    config = models_cli(bare, tmp_path, "pirate")
    assert config["model_dir"] == "tinychat-inference" and config["dockerfile"] == "llama-server"
    assert config["model_dir"] in models_cli(bare, tmp_path, "--inference-dirs")
    assert first.inference_dir == "tinychat-inference"
    # The push touched config/**: the repository's Build ran for it and was waited for.
    build = hub.runs_of("build-push-images.yml")
    assert [r["head_sha"] for r in build] == [first.commit_sha] and build[0][
        "conclusion"
    ] == "success"
    assert first.build_run_url == build[0]["html_url"]
    assert "- pirate" in main_file(bare, ".github/workflows/inference.yml")
    frontend = json.loads(main_file(bare, MODELS_JSON))["models"]
    assert "pirate" in [m.get("key") for m in frontend]
    assert [m for m in frontend if m["type"] == "api"] == api_before
    assert hub.dispatches[-1] == {
        "ref": "main",
        "inputs": {"model": "pirate"},
        "return_run_details": True,
    }
    assert server.requests[-1]["model"] == "pirate"


def test_redeploy_with_a_new_file_changes_only_the_entry(world):
    bare, hub, server = world
    target = target_for(bare, hub, server)
    deploy_to_serverless_llm(GGUF, "pirate", target, target_name="sllm")
    before = git(bare, "rev-parse", "main")
    json_before = main_file(bare, MODELS_JSON)

    second = deploy_to_serverless_llm(
        "hf://me/pirate-GGUF/pirate-v2-Q4_K_M.gguf", "pirate", target, target_name="sllm"
    )
    assert second.status is ServeStatus.SERVING and second.models_entry_changed
    assert git(bare, "diff", "--name-only", before, "main").split() == ["config/models.py"]
    diff = git(bare, "diff", "-U0", before, "main")
    changed = [
        line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ]
    assert changed == [
        '-        hf_file="pirate-Q4_K_M.gguf",',
        '+        hf_file="pirate-v2-Q4_K_M.gguf",',
    ]
    assert main_file(bare, MODELS_JSON) == json_before  # every API entry, byte for byte
    assert read_entries(main_file(bare, "config/models.py"))["pirate"]["port"] == 8103


@pytest.mark.parametrize("mode", [DeployMode.PUSH, DeployMode.PULL_REQUEST])
def test_identical_redeploy_commits_and_pushes_nothing(world, mode):
    bare, hub, server = world
    target = target_for(bare, hub, server, mode=mode)
    first = deploy_to_serverless_llm(GGUF, "pirate", target, target_name="sllm")
    refs, pushes, dispatches = git(bare, "for-each-ref"), len(hub.pushes), len(hub.dispatches)

    again = deploy_to_serverless_llm(GGUF, "pirate", target, target_name="sllm")
    assert again.status is ServeStatus.UNCHANGED and again.models_entry_changed is False
    assert git(bare, "for-each-ref") == refs and len(hub.pushes) == pushes
    assert again.commit_sha == first.commit_sha and again.smoke.reply == "Paris."
    assert len(hub.dispatches) == dispatches  # already serving: not restarted
    assert len(hub.pulls) == (1 if mode is DeployMode.PULL_REQUEST else 0)


def test_pull_request_mode_serves_the_branch_from_an_image_main_built(world, tmp_path):
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
    assert "pirate" not in read_entries(main_file(bare, "config/models.py"))
    assert hub.dispatches[-1]["ref"] == "lmft/deploy-pirate"
    # A branch push builds nothing; the run pulled the llama-server image main already had.
    assert hub.runs_of("build-push-images.yml") == []
    run = hub.runs_of("inference.yml")[-1]
    assert run["status"] == "in_progress" and run["head_branch"] == "lmft/deploy-pirate"
    config = models_cli(bare, tmp_path, "pirate", ref="lmft/deploy-pirate")
    assert config["model_dir"] in hub.registry


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
    build = hub.runs_of("build-push-images.yml")
    assert [r["head_sha"] for r in build] == [deployment.commit_sha]
    assert deployment.build_run_url == build[0]["html_url"] and hub.dispatches[-1]["ref"] == "main"
    assert "pirate" in read_entries(main_file(bare, "config/models.py"))


def test_no_wait_for_a_build_the_push_does_not_start(world):
    bare, hub, server = world
    # The maintainers' Build only reacts to app/shared/**: a config change starts nothing.
    work = bare.parent / "maint"
    git(bare.parent, "clone", "-q", str(bare), str(work))
    path = work / ".github/workflows/build-push-images.yml"
    path.write_text(path.read_text().replace("      - 'config/**'\n", ""))
    git(work, "-c", "user.name=m", "-c", "user.email=m@x", "commit", "-qam", "build on app/ only")
    git(work, "push", "-q", "origin", "main")
    runs = len(hub.runs_of("build-push-images.yml"))  # that push touched the workflow itself

    deployment = deploy_to_serverless_llm(
        GGUF, "pirate", target_for(bare, hub, server, build_timeout_seconds=0.5), target_name="s"
    )
    assert deployment.status is ServeStatus.SERVING and deployment.build_run_url is None
    assert len(hub.runs_of("build-push-images.yml")) == runs


def test_failed_inference_run_fails_at_once_and_rolls_back(world):
    bare, hub, server = world
    hub.crash_inference = "the GGUF does not load"
    target = target_for(bare, hub, server, mode=DeployMode.PULL_REQUEST, health_timeout_seconds=600)
    with pytest.raises(DeploymentFailed) as caught:
        deploy_to_serverless_llm(GGUF, "pirate", target, target_name="sllm")
    run = hub.runs_of("inference.yml")[-1]
    assert run["conclusion"] == "failure"
    message = str(caught.value)
    assert run["html_url"] in message and "failure" in message
    assert "Start inference server" in message
    # Noticed at the first look after the run ended, not after the 600 s health timeout.
    assert len([t for t in server.health_checks if t >= hub.completed_at[run["id"]]]) <= 1
    record = caught.value.record
    assert record.status is ServeStatus.ROLLED_BACK and record.inference_run_url == run["html_url"]
    assert record.pull_request_url == hub.pulls[0]["html_url"] and run["html_url"] in record.reason
    assert hub.pulls[0]["state"] == "closed" and not hub.pulls[0]["merged"]
    assert "did not serve" in hub.comments[0]["body"]
    assert (
        subprocess.run(
            ["git", "rev-parse", "--verify", "lmft/deploy-pirate"], cwd=bare, capture_output=True
        ).returncode
        != 0
    )


def test_failed_smoke_in_push_mode_restores_the_previous_entry(world):
    bare, hub, server = world
    target = target_for(bare, hub, server)
    deploy_to_serverless_llm(GGUF, "pirate", target, target_name="sllm")
    before = main_file(bare, "config/models.py")
    json_before = main_file(bare, MODELS_JSON)
    server.healthy = False
    with pytest.raises(DeploymentFailed) as caught:
        deploy_to_serverless_llm(
            "hf://me/pirate-GGUF/pirate-v2.gguf", "pirate", target, target_name="sllm"
        )
    assert main_file(bare, "config/models.py") == before
    assert main_file(bare, MODELS_JSON) == json_before
    assert git(bare, "log", "-1", "--format=%s", "main") == "Roll back pirate: it did not serve"
    record = caught.value.record
    assert record.status is ServeStatus.ROLLED_BACK and "HTTP 500" in record.reason
    assert record.rolled_back_by == git(bare, "rev-parse", "main")
    assert hub.runs_of("inference.yml")[-1]["conclusion"] == "cancelled"


def test_repository_without_a_llama_server_image_is_refused(tmp_path):
    bare = make_serverless_repo(tmp_path, llama_server=False)
    server = FakeModelServer()
    with FakeGitHub(bare, token=TOKEN, model_server=server) as hub:
        before = git(bare, "for-each-ref")
        for mode in DeployMode:
            with pytest.raises(
                ModelsFileError, match="llama-server.*inference_dir.*Nothing was pushed"
            ):
                deploy_to_serverless_llm(
                    GGUF, "pirate", target_for(bare, hub, server, mode=mode), target_name="s"
                )
        with pytest.raises(
            ModelsFileError, match="'nowhere-inference'.*not an image the repository builds"
        ):
            deploy_to_serverless_llm(
                GGUF,
                "pirate",
                target_for(bare, hub, server, inference_dir="nowhere-inference"),
                target_name="s",
            )
        assert git(bare, "for-each-ref") == before and hub.pushes == [] and hub.dispatches == []
    server.close()


def test_inference_dir_override_on_the_target(world, tmp_path):
    bare, hub, server = world
    target = target_for(bare, hub, server, inference_dir="thinker-inference")
    deployment = deploy_to_serverless_llm(GGUF, "pirate", target, target_name="s")
    assert deployment.inference_dir == "thinker-inference"
    assert models_cli(bare, tmp_path, "pirate")["model_dir"] == "thinker-inference"


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


def test_api_models_dropped_by_a_generator_stop_the_deployment(tmp_path):
    """A generator that loses the API models (as printing over models.json did) is caught."""
    bare = make_serverless_repo(tmp_path)
    work = tmp_path / "maint"
    git(tmp_path, "clone", "-q", str(bare), str(work))
    script = work / "scripts/generate_models_json.py"
    script.write_text(script.read_text().replace("local + kept", "local"))
    git(work, "-c", "user.name=m", "-c", "user.email=m@x", "commit", "-qam", "regress")
    git(work, "push", "-q", "origin", "main")
    server = FakeModelServer()
    with FakeGitHub(bare, token=TOKEN) as hub:
        with pytest.raises(SyncError, match=f"dropped {len(API_MODELS)} of the {len(API_MODELS)}"):
            deploy_to_serverless_llm(GGUF, "pirate", target_for(bare, hub, server), target_name="s")
        assert git(bare, "rev-list", "--count", "main") == "2" and hub.dispatches == []
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
    with pytest.raises(ValueError, match="inference_dir"):
        ServerlessLLMTarget(repository="a/b", inference_dir="../x")
    assert hub.dispatches == [] and git(bare, "rev-list", "--count", "main") == "1"


def test_token_never_appears_in_git_errors(tmp_path):
    with pytest.raises(GitError) as caught:
        GitClone.clone("http://127.0.0.1:9/nowhere.git", tmp_path / "c", branch="main", token=TOKEN)
    assert TOKEN not in str(caught.value)
    with pytest.raises(ValueError, match="must not carry credentials"):
        GitClone.clone(f"https://{TOKEN}@github.com/a/b.git", tmp_path / "d", branch="main")
