"""`prefect.yaml`: its deployments deploy to a Prefect server, and a process worker started
here runs a `finetune` flow run of the tiny model from its deployment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.settings import PREFECT_API_URL

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    "finetune",
    "validate",
    "estimate",
    "convert",
    "deploy",
    "retrain",
    "cost_report",
    "settle_ended_runs",
    "spend_alerts",
    "health_check",
    "merge_watch",
    "models",
}


def load_prefect_yaml() -> dict:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def local_prefect_yaml(target: Path, pool: str) -> tuple[Path, list[str]]:
    """A copy of prefect.yaml that runs from this checkout (no git clone, no install) on `pool`.

    Deployments whose entrypoint file is not in this checkout are left out; schedules are
    kept but paused, so only the runs a test creates execute.
    """
    config = load_prefect_yaml()
    config["pull"] = [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
    deployments = [
        d for d in config["deployments"] if (ROOT / d["entrypoint"].split(":")[0]).exists()
    ]
    for deployment in deployments:
        deployment["work_pool"] = {**deployment["work_pool"], "name": pool}
        for schedule in deployment.get("schedules") or []:
            schedule["active"] = False
    config["deployments"] = deployments
    config.pop("definitions", None)
    path = target / "prefect.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, [d["name"] for d in deployments]


def test_prefect_yaml_declares_the_service() -> None:
    config = load_prefect_yaml()
    assert config["build"] is None and config["push"] is None
    steps = [next(iter(step)) for step in config["pull"]]
    assert steps == [
        "prefect.deployments.steps.git_clone",
        "prefect.deployments.steps.set_working_directory",
        "prefect.deployments.steps.run_shell_script",
    ]
    install = config["pull"][2]["prefect.deployments.steps.run_shell_script"]
    assert (
        "torch==2.13.0" in install["script"] and install["env"]["CMAKE_ARGS"] == "-DGGML_NATIVE=OFF"
    )
    deployments = {d["name"]: d for d in config["deployments"]}
    assert set(deployments) == EXPECTED
    for name, deployment in deployments.items():
        module, _, function = deployment["entrypoint"].partition(":")
        assert module == f"flows/{name}.py" and function == name
        assert deployment["work_pool"]["name"] == "github-actions"
        assert deployment["concurrency_limit"]["limit"] >= 1
    assert [s["cron"] for s in deployments["retrain"]["schedules"]] == ["0 2 * * *"]
    assert [s["cron"] for s in deployments["cost_report"]["schedules"]] == ["0 7 * * *"]
    assert [t["expect"] for t in deployments["finetune"]["triggers"]] == [
        ["lmft.finetune.requested"]
    ]


@pytest.fixture
def work_pool(prefect_server):
    """A process work pool; afterwards its deployments are deleted, so that the session's other
    tests (the MCP adapter serves deployments of the same names) never reach them."""
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    pool = f"gha-{uuid.uuid4().hex[:8]}"
    yield pool
    with get_client(sync_client=True) as client:
        pools = WorkPoolFilter(name=WorkPoolFilterName(any_=[pool]))
        for deployment in client.read_deployments(work_pool_filter=pools):
            client.delete_deployment(deployment.id)
        client.delete_work_pool(pool)


def test_deployed_finetune_runs_on_a_process_worker(
    tmp_path: Path, tiny_llama: Path, work_pool: str
) -> None:
    pool = work_pool
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.actions import WorkPoolCreate

        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    prefect_file, names = local_prefect_yaml(tmp_path, pool)
    assert {"finetune", "retrain", "health_check", "deploy", "cost_report"} <= set(names)
    deploy = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect",
            "--no-prompt",
            "deploy",
            "--all",
            "--prefect-file",
            str(prefect_file),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr

    data = tmp_path / "chats.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"hi {i}"},
                        {"role": "assistant", "content": f"ahoy {i}"},
                    ]
                }
            )
            + "\n"
            for i in range(12)
        )
    )
    request = {
        "base_model": str(tiny_llama),
        "dataset": {"path": str(data)},
        "hyperparameters": {"max_steps": 2, "batch_size": 2, "max_length": 64},
        "output_name": "tiny-deployed",
        "gguf": None,
        "deploy": None,
    }
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("finetune/finetune")
        assert deployment.global_concurrency_limit.limit == 2
        assert deployment.concurrency_options.collision_strategy == "ENQUEUE"
        retrain = client.read_deployment_by_name("retrain/retrain")
        assert [s.schedule.cron for s in retrain.schedules] == ["0 2 * * *"]
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"request": request})

    worker = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect",
            "worker",
            "start",
            "--pool",
            pool,
            "--type",
            "process",
            "--run-once",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    with get_client(sync_client=True) as client:
        finished = client.read_flow_run(run.id)
        assert finished.state.is_completed(), worker.stdout[-3000:] + worker.stderr[-3000:]
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    summary = next(a for a in artifacts if a.key == "finetune-summary")
    assert "tiny-deployed" in summary.data and "| steps | 2 |" in summary.data


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_deployment_has_parameters_or_defaults(name: str) -> None:
    deployment = next(d for d in load_prefect_yaml()["deployments"] if d["name"] == name)
    assert deployment.get("description")
    assert isinstance(deployment.get("parameters", {}), dict)
