"""`lmft status RUN_ID` prints the status a run published (the MCP tool get_job_status reads the same)."""

from __future__ import annotations

import uuid

from typer.testing import CliRunner

from cli import app
from tests.tasks.reporting.test_status import status_probe

runner = CliRunner()


def test_status_prints_stage_gate_progress_cost_and_links(prefect_server):
    run_id = status_probe()

    result = runner.invoke(app, ["status", run_id])

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "  stage         completed" in lines
    assert "  budget gate   passed" in lines
    assert "  estimate      $1.00 (up to $2.00) on a10g-small" in lines
    assert "  training      step 2/4, loss 2.5000, eval loss 2.7500, ETA 3 s" in lines
    assert "  eval loss     base 3.0000 -> best 2.7500 at step 1" in lines
    assert "  cost so far   $0.25" in lines
    assert "  HF job        https://hf.example/jobs/me/1" in lines


def test_status_refuses_what_is_not_a_run(prefect_server):
    not_an_id = runner.invoke(app, ["status", "yesterday"])
    assert not_an_id.exit_code == 2 and "not a flow run id" in not_an_id.output
    missing = str(uuid.uuid4())
    unknown = runner.invoke(app, ["status", missing])
    assert unknown.exit_code == 1 and f"no flow run with id {missing}" in unknown.output
