"""`lmft cancel` against the local Hugging Face Jobs server."""

from __future__ import annotations

import uuid

from typer.testing import CliRunner

from cli.app import app


def test_cancel_a_hugging_face_job_by_id(hf_server):
    hf_server.run_jobs = False  # the test plays the job's life
    job = hf_server.create_job(
        hf_server.namespace, {"command": ["python"], "dockerImage": "python:3.12"}
    )
    hf_server.set_stage(job.id, "RUNNING")

    outcome = CliRunner().invoke(app, ["cancel", job.id])

    assert outcome.exit_code == 0, outcome.output
    assert f"job {job.id} (hf-jobs): cancelled" in outcome.output
    assert hf_server.jobs[job.id].stage == "CANCELED"
    assert hf_server.token not in outcome.output


def test_cancel_by_flow_run_cancels_every_job_it_started(prefect_server, hf_server):
    hf_server.run_jobs = False  # the test plays the jobs' lives
    run_id = str(uuid.uuid4())
    mine = [
        hf_server.create_job(
            hf_server.namespace,
            {
                "command": ["python"],
                "dockerImage": "python:3.12",
                "labels": {"flow_run_id": run_id},
            },
        )
        for _ in range(2)
    ]
    other = hf_server.create_job(
        hf_server.namespace, {"command": ["python"], "dockerImage": "python:3.12"}
    )

    outcome = CliRunner().invoke(app, ["cancel", run_id])

    assert outcome.exit_code == 0, outcome.output
    assert all(hf_server.jobs[job.id].stage == "CANCELED" for job in mine)
    assert hf_server.jobs[other.id].stage == "SCHEDULING"


def test_cancel_an_unknown_job_says_so(hf_server):
    outcome = CliRunner().invoke(app, ["cancel", "0123456789abcdef01234567"])
    assert outcome.exit_code != 0
    assert "no Hugging Face job '0123456789abcdef01234567'" in outcome.output
