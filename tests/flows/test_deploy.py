"""`lmft deploy` runs the `deploy` flow: the embedded GGUF served locally, then `lmft serve stop`."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.app import app
from tasks.deployment import deployments_dir
from tasks.serving.local import find_local_server


def test_lmft_deploy_serves_the_embedded_model_locally_until_stopped(prefect_server):
    runner = CliRunner()
    result = runner.invoke(app, ["deploy", "--name", "smollm2"])
    try:
        assert result.exit_code == 0, result.output
        assert "smollm2: serving" in result.output and "url           http://127.0.0.1:" in result.output
        record = json.loads((deployments_dir() / "smollm2.json").read_text())
        assert record["target"] == "local" and record["smoke"]["reply"]
        server = find_local_server("smollm2")
        assert server is not None and server.url == record["url"]  # still running after the flow ended
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
    assert unknown.exit_code == 1 and "neither 'local' nor a saved ServerlessLLMTarget" in unknown.output
