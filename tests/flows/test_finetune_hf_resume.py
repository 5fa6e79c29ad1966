"""On `hf-jobs`, a job stopped after it pushed a checkpoint is followed by a job resuming from it:
one flow run, two jobs, two ledger entries (the first billed for its running time).

Runs against the Hugging Face double that executes the submitted job (tests/doubles/job_runner.py).
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from flows.finetune import finetune
from tasks.costs.ledger import ReservationStatus

pytest.importorskip("tests.doubles.job_runner", reason="needs the double that runs jobs (issue 13)")

from tests.flows.test_finetune_hf_jobs import hf_request, hub, ledger  # noqa: E402, F401

CHECKPOINT_STATE = "checkpoints/last/trainer_state.json"


def stop_first_job_after_its_checkpoint(server, stopped: list[dict]) -> None:
    """As the service does at a job's timeout: SIGTERM to its processes, then ERROR."""
    repo_id = f"{server.namespace}/tiny-pirate"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        repo = server.repos.get(repo_id)
        pushed = repo.commits[-1].files if repo and repo.commits else {}
        if CHECKPOINT_STATE in pushed and server.jobs:
            job_id = next(iter(server.jobs))
            stopped.append(
                {"job": job_id, "step": json.loads(pushed[CHECKPOINT_STATE])["global_step"]}
            )
            server.processes[job_id]._kill()
            return
        time.sleep(0.1)


def test_a_stopped_job_is_resumed_from_the_checkpoint_it_pushed(hub, ledger):  # noqa: F811
    request = hf_request(
        hub,
        hyperparameters={"max_steps": 12, "batch_size": 2, "max_length": 64},
        checkpoints={"save_steps": 2},
    )
    stopped: list[dict] = []
    stopper = threading.Thread(target=stop_first_job_after_its_checkpoint, args=(hub, stopped))
    stopper.start()

    state = finetune(request, idempotency_key="hf-resume", return_state=True)
    stopper.join()

    assert state.is_completed(), state.message
    summary = state.result()
    first, second = hub.jobs.values()
    assert [first.id, second.id] == summary.jobs and stopped[0]["job"] == first.id
    assert first.stage == "ERROR" and second.stage == "COMPLETED"
    # the second job downloaded the checkpoint the first pushed and went on from its step
    assert "--resume_from_checkpoint" in second.spec["command"]
    logs = [json.loads(line[14:]) for _, line in second.logs if line.startswith("LMFT_PROGRESS ")]
    resumed_at = logs[0]["resumed_from_step"]
    assert resumed_at >= stopped[0]["step"] and logs[0]["step"] == resumed_at + 1
    assert summary.steps == 12
    # one flow run, both jobs labelled with it; one ledger entry per job, both closed
    flow_run_id = str(state.state_details.flow_run_id)
    assert {j.spec["labels"]["flow_run_id"] for j in (first, second)} == {flow_run_id}
    entries = sorted(ledger.entries(flow_run_id=flow_run_id), key=lambda e: e.created_at)
    assert [e.run_key for e in entries] == ["hf-resume", "hf-resume-resume-1"]
    assert all(e.status is ReservationStatus.SETTLED and e.reserved_usd == 0 for e in entries)
    assert first.id in entries[0].note
    # the resumed job was estimated (and held) for its remaining steps only
    assert entries[1].high_usd <= entries[0].high_usd
