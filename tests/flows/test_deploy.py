"""`lmft deploy` runs the `deploy` flow: the embedded GGUF served locally, then `lmft serve stop`."""

from __future__ import annotations

import asyncio
import json

from typer.testing import CliRunner

from cli.app import app
from tasks.serving.deploy import deployments_dir
from tasks.serving.local import find_local_server


def test_lmft_deploy_serves_the_embedded_model_locally_until_stopped(prefect_server):
    runner = CliRunner()
    result = runner.invoke(app, ["deploy", "--name", "smollm2"])
    try:
        assert result.exit_code == 0, result.output
        assert (
            "smollm2: serving" in result.output
            and "url           http://127.0.0.1:" in result.output
        )
        record = json.loads((deployments_dir() / "smollm2.json").read_text())
        assert record["target"] == "local" and record["smoke"]["reply"]
        server = find_local_server("smollm2")
        assert (
            server is not None and server.url == record["url"]
        )  # still running after the flow ended
        listed = runner.invoke(app, ["serve", "list"])
        assert '"name": "smollm2"' in listed.output
    finally:
        stopped = runner.invoke(app, ["serve", "stop", "smollm2"])
    assert stopped.exit_code == 0 and find_local_server("smollm2") is None
    assert runner.invoke(app, ["serve", "stop", "smollm2"]).exit_code == 1


def test_lmft_deploy_refuses_unknown_target_and_missing_file(prefect_server):
    runner = CliRunner()
    missing = runner.invoke(app, ["deploy", "/nowhere/model.gguf"])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    unknown = runner.invoke(app, ["deploy", "--name", "smollm2", "--target", "no-such-block"])
    assert (
        unknown.exit_code == 1
        and "neither 'local' nor a saved ServerlessLLMTarget" in unknown.output
    )


async def _latest_artifact(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async with get_client() as client:
        (artifact,) = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
        return artifact.data


def test_deploy_flow_to_a_saved_serverless_llm_target_then_a_rolled_back_redeploy(
    prefect_server, tmp_path
):
    from prefect_github import GitHubCredentials

    from blocks.serverless_llm import DeployMode, ServerlessLLMTarget
    from tests.doubles.github_server import FakeGitHub, FakeModelServer
    from tests.doubles.serverless_llm_repo import git, make_serverless_repo

    token = "ghp_flow_secret_987"
    bare = make_serverless_repo(tmp_path)
    model_server = FakeModelServer()
    runner = CliRunner()
    command = ["deploy", "hf://me/pirate-GGUF/pirate.Q4_K_M.gguf", "--name", "pirate"]
    with FakeGitHub(bare, token=token, model_server=model_server) as hub:
        ServerlessLLMTarget(
            repository=hub.repository,
            credentials=GitHubCredentials(token=token),
            api_base_url=hub.base_url,
            clone_url=str(bare),
            health_url_pattern=model_server.url + "/health",
            mode=DeployMode.PUSH,
            poll_seconds=0.05,
            health_timeout_seconds=60,
        ).save("sllm-test", overwrite=True)
        result = runner.invoke(app, [*command, "--target", "sllm-test"])
        served = git(bare, "show", "main:config/models.py")

        hub.crash_inference = "the new GGUF does not load"
        failed = runner.invoke(
            app,
            [
                *command[:1],
                "hf://me/pirate-GGUF/pirate-v2.gguf",
                *command[2:],
                "--target",
                "sllm-test",
            ],
        )
        listed = runner.invoke(app, ["serve", "list"])
    model_server.close()
    assert result.exit_code == 0, result.output
    assert "pirate: serving" in result.output and "inference run" in result.output
    assert "pirate" in served

    assert failed.exit_code == 1, failed.output
    run = hub.runs_of("inference.yml")[-1]
    assert "pirate: rolled_back" in failed.output and run["html_url"] in failed.output
    assert git(bare, "show", "main:config/models.py") == served  # the entry was restored
    record = json.loads((deployments_dir() / "pirate.json").read_text())
    assert record["status"] == "rolled_back" and run["html_url"] in record["reason"]
    assert record["inference_run_url"] == run["html_url"]
    assert record["rolled_back_by"] == git(bare, "rev-parse", "main")
    artifact = asyncio.run(_latest_artifact("deployment-pirate"))
    assert "**rolled_back:**" in artifact and run["html_url"] in artifact
    line = next(json.loads(x) for x in listed.output.splitlines() if '"pirate"' in x)
    assert line["status"] == "rolled_back" and line["target"] == "sllm-test"
    for text in (result.output, failed.output, listed.output, json.dumps(record)):
        assert token not in text
