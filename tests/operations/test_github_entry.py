"""The GitHub entry module: a recorded event payload, as GitHub sends it, starts exactly one run
of the right deployment with the right parameters on a real Prefect server; a re-run of the
same workflow run starts nothing new; hostile inputs are refused before anything starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter

from operations.github_entry import GitHubEvent, Pipeline, dispatch, main
from schemas.flows import DeploymentName
from schemas.validation import ValidationReport

ROOT = Path(__file__).resolve().parents[2]
EVENTS = Path(__file__).parent / "events"
DEPLOYMENTS = (
    DeploymentName.FINETUNE,
    DeploymentName.VALIDATE,
    DeploymentName.CONVERT,
    DeploymentName.DEPLOY,
)


@pytest.fixture(scope="module")
def deployments(prefect_server) -> None:
    """The pipeline's deployments, from the real flows (their parameter schemas enforced); no
    worker, so the runs wait in Scheduled unless a test executes one."""
    from flows.convert import convert
    from flows.deploy import deploy
    from flows.finetune import finetune
    from flows.validate import validate

    flows = {"finetune": finetune, "validate": validate, "convert": convert, "deploy": deploy}
    for name in DEPLOYMENTS:
        flows[name.flow_name].to_deployment(
            name=name.deployment_name, enforce_parameter_schema=True
        ).apply()


@pytest.fixture(autouse=True)
def in_repository(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The checkout is the working directory (dataset paths are relative to it); the summary file."""
    monkeypatch.chdir(ROOT)
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/lm-fine-tuning")
    return summary


def runs_of(deployment: DeploymentName):
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(any_=[deployment.deployment_name])
            ),
            flow_run_filter=FlowRunFilter(),
        )


def event(tmp_path: Path, name: str, payload: dict, run_id: str) -> list[str]:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(payload))
    return ["--event-file", str(path), "--event-name", name, "--run-id", run_id]


def recorded(name: str) -> dict:
    return json.loads((EVENTS / f"{name}.json").read_text())


def test_workflow_dispatch_starts_one_finetune_run_and_a_rerun_starts_none(
    deployments, tmp_path: Path, in_repository: Path
) -> None:
    before = len(runs_of(DeploymentName.FINETUNE))
    args = event(tmp_path, "workflow_dispatch", recorded("workflow_dispatch"), "7001")
    assert main(["train", *args, "--wait-seconds", "0"]) == 0
    runs = runs_of(DeploymentName.FINETUNE)
    assert len(runs) == before + 1
    run = next(
        r for r in runs if r.idempotency_key == "finetune:github:acme/lm-fine-tuning:run-7001"
    )
    request = run.parameters["request"]
    assert (request["base_model"], request["dataset"]["path"], request["method"]) == (
        "smollm2-135m-instruct",
        "examples/pirate_chat.jsonl",
        "sft",
    )
    assert request["backend"] == "local" and request["hyperparameters"]["max_steps"] == 2
    assert run.parameters["idempotency_key"] == "github:acme/lm-fine-tuning:run-7001"
    summary = in_repository.read_text()
    assert run.name in summary and str(run.id) in summary and "Scheduled" in summary

    # A re-run of the workflow run (attempt 2: same GITHUB_RUN_ID) finds the same flow run.
    assert main(["train", *args, "--wait-seconds", "0"]) == 0
    assert len(runs_of(DeploymentName.FINETUNE)) == before + 1
    assert "an earlier attempt" in in_repository.read_text()


def test_repository_dispatch_trigger_training_reads_client_payload(
    deployments, tmp_path: Path
) -> None:
    before = len(runs_of(DeploymentName.FINETUNE))
    github = GitHubEvent(
        name="repository_dispatch",
        payload=recorded("repository_dispatch"),
        repository="acme/lm-fine-tuning",
        run_id="7002",
    )
    outcome = dispatch(Pipeline.TRAIN, github, wait_seconds=0)
    assert not outcome.reused and outcome.deployment == DeploymentName.FINETUNE.value
    [run] = [r for r in runs_of(DeploymentName.FINETUNE) if str(r.id) == outcome.flow_run_id]
    assert run.parameters["request"]["output_name"] == "serverless-llm-pirate"
    assert len(runs_of(DeploymentName.FINETUNE)) == before + 1
    assert dispatch(Pipeline.TRAIN, github, wait_seconds=0).reused
    assert len(runs_of(DeploymentName.FINETUNE)) == before + 1


def test_other_workflows_start_their_deployments(deployments, tmp_path: Path) -> None:
    cases = {
        Pipeline.VALIDATE: (
            {"dataset": "examples/pirate_chat.jsonl", "training_method": "sft"},
            DeploymentName.VALIDATE,
            lambda p: p["request"]["dataset"]["path"] == "examples/pirate_chat.jsonl",
        ),
        Pipeline.CONVERT: (
            {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "quant_types": "Q4_K_M, Q8_0"},
            DeploymentName.CONVERT,
            lambda p: (
                p["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
                and p["settings"]["quant_types"] == ["Q4_K_M", "Q8_0"]
            ),
        ),
        Pipeline.DEPLOY: (
            {"gguf_path": "hf://acme/pirate-GGUF/pirate.Q4_K_M.gguf", "name": "pirate"},
            DeploymentName.DEPLOY,
            lambda p: (
                p
                == {
                    "gguf_path": "hf://acme/pirate-GGUF/pirate.Q4_K_M.gguf",
                    "name": "pirate",
                    "target": "serverless-llm",
                }
            ),
        ),
    }
    for number, (pipeline, (inputs, deployment, check)) in enumerate(cases.items()):
        before = len(runs_of(deployment))
        payload = {**recorded("workflow_dispatch"), "inputs": inputs}
        args = event(tmp_path, "workflow_dispatch", payload, f"71{number}")
        assert main([pipeline.value, *args, "--wait-seconds", "0"]) == 0, pipeline
        runs = runs_of(deployment)
        assert len(runs) == before + 1, pipeline
        assert check(runs[0].parameters if len(runs) == 1 else _newest(runs).parameters), pipeline


def _newest(runs):
    return max(runs, key=lambda r: r.created)


HOSTILE = [
    ("model_name", '"; rm -rf /', "model_name"),
    ("dataset", "$(id)", "dataset"),
    ("model_name", "x" * 10_000, "at most"),
    ("training_method", "rlhf-magic", "training_method"),
    ("dataset", "/etc/passwd", "outside the repository"),
    ("dataset", "../secrets.jsonl", "outside the repository"),
    ("hardware", "a10g-small\nrm -rf /", "control characters"),
    ("config_json", '{"backend": "hf-jobs", "hardware": "$(id)"}', "hardware"),
    ("config_json", "[1, 2]", "JSON object"),
    ("surprise", "1", "unknown input"),
]


@pytest.mark.parametrize(
    ("field", "value", "says"), HOSTILE, ids=[h[0] + "-" + h[2] for h in HOSTILE]
)
def test_hostile_inputs_are_refused_and_start_nothing(
    deployments, tmp_path: Path, in_repository: Path, capsys, field: str, value: str, says: str
) -> None:
    before = len(runs_of(DeploymentName.FINETUNE))
    payload = recorded("workflow_dispatch")
    payload["inputs"][field] = value
    assert (
        main(
            ["train", *event(tmp_path, "workflow_dispatch", payload, "7999"), "--wait-seconds", "0"]
        )
        == 2
    )
    error = capsys.readouterr().err
    assert "refused, nothing started" in error and says in error
    assert len(runs_of(DeploymentName.FINETUNE)) == before
    assert "refused" in in_repository.read_text()


def test_hostile_repository_dispatch_is_refused(deployments, tmp_path: Path, capsys) -> None:
    before = len(runs_of(DeploymentName.FINETUNE))
    payload = recorded("repository_dispatch")
    payload["client_payload"]["training_method"] = "$(id)"
    assert main(["train", *event(tmp_path, "repository_dispatch", payload, "7998")]) == 2
    assert "training_method" in capsys.readouterr().err
    other = {**recorded("repository_dispatch"), "action": "delete_everything"}
    assert main(["train", *event(tmp_path, "repository_dispatch", other, "7997")]) == 2
    assert "trigger_training" in capsys.readouterr().err
    assert len(runs_of(DeploymentName.FINETUNE)) == before


def test_follows_the_run_to_its_end_and_summarises_its_result(
    deployments, tmp_path: Path, in_repository: Path, embedded_base_model
) -> None:
    """The validate run is executed for real (Prefect's engine, as a worker starts it) while the
    entry module follows it; the summary then holds the state and the ValidationReport."""
    from prefect.settings import PREFECT_API_URL

    payload = {
        **recorded("workflow_dispatch"),
        "inputs": {"dataset": "examples/pirate_chat.jsonl", "training_method": "sft"},
    }
    codes: list[int] = []
    args = event(tmp_path, "workflow_dispatch", payload, "7100")
    follower = threading.Thread(
        target=lambda: codes.append(
            main(["validate", *args, "--wait-seconds", "240", "--poll-seconds", "0.5"])
        )
    )
    follower.start()
    try:
        run = None
        while run is None and follower.is_alive():
            found = [
                r
                for r in runs_of(DeploymentName.VALIDATE)
                if r.idempotency_key == "validate:github:acme/lm-fine-tuning:run-7100"
            ]
            run = found[0] if found else None
        assert run is not None
        env = {
            **os.environ,
            "PREFECT_API_URL": PREFECT_API_URL.value(),
            "PREFECT__FLOW_RUN_ID": str(run.id),
            "PYTHONPATH": str(ROOT),
        }
        done = subprocess.run(
            [sys.executable, "-m", "prefect.engine"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finally:
        follower.join(timeout=300)
    assert codes == [0]
    summary = in_repository.read_text()
    assert "- **state**: Completed" in summary
    result = summary.split("### Result", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    assert ValidationReport.model_validate_json(result).ok


WORKFLOWS = {
    "train-model.yml": Pipeline.TRAIN,
    "validate-dataset.yml": Pipeline.VALIDATE,
    "convert-to-gguf.yml": Pipeline.CONVERT,
    "deploy-to-serverless-llm.yml": Pipeline.DEPLOY,
}


@pytest.mark.parametrize(("workflow", "pipeline"), WORKFLOWS.items())
def test_each_workflow_declares_the_inputs_its_module_reads(
    workflow: str, pipeline: Pipeline
) -> None:
    """The form GitHub shows and the model that checks it agree; the step runs the module and
    no input reaches a shell."""
    import yaml

    from operations.github_entry import PIPELINES

    spec = yaml.safe_load((ROOT / ".github" / "workflows" / workflow).read_text())
    triggers = spec[True]  # PyYAML reads the key `on` as True
    declared = set(triggers["workflow_dispatch"]["inputs"])
    inputs_model, _ = PIPELINES[pipeline]
    assert declared <= set(inputs_model.model_fields), declared - set(inputs_model.model_fields)
    required = {n for n, f in inputs_model.model_fields.items() if f.is_required()}
    assert required <= declared
    steps = [step for job in spec["jobs"].values() for step in job["steps"]]
    runs = [step["run"] for step in steps if "run" in step]
    assert any(f"python -m operations.github_entry {pipeline.value}" in run for run in runs)
    assert not any("inputs." in run or "client_payload" in run for run in runs)
    if pipeline is Pipeline.TRAIN:
        assert triggers["repository_dispatch"]["types"] == ["trigger_training"]


@pytest.mark.skipif(
    shutil.which("jq") is None, reason="jq is not installed (GitHub's runners have it)"
)
def test_the_serverless_llm_example_sends_a_payload_this_module_accepts(tmp_path: Path) -> None:
    """The example step's own jq program builds the request body; GitHub turns it into the
    repository_dispatch event (`action` = event_type); the train pipeline accepts it."""
    import yaml

    from operations.github_entry import parameters_for

    spec = yaml.safe_load((ROOT / "examples" / "serverless-llm-request-finetune.yml").read_text())
    [step] = spec["jobs"]["request"]["steps"]
    program = step["run"].split("> dispatch.json", 1)[0]
    env = {
        "PATH": os.environ["PATH"],
        "MODEL_NAME": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "DATASET": "trl-lib/Capybara",
        "TRAINING_METHOD": "sft",
        "HARDWARE": "a10g-small",
        "OUTPUT_NAME": "capybara-smollm2",
    }
    body = json.loads(
        subprocess.run(
            ["bash", "-c", program], env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    payload = {
        **recorded("repository_dispatch"),
        "action": body["event_type"],
        "client_payload": body["client_payload"],
    }
    event = GitHubEvent(
        name="repository_dispatch", payload=payload, repository="acme/lmft", run_id="1"
    )
    request = parameters_for(Pipeline.TRAIN, event)["request"]
    assert (request["base_model"], request["dataset"]["path"], request["hardware"]) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "trl-lib/Capybara",
        "a10g-small",
    )
    assert request["backend"] == "hf-jobs" and request["output_name"] == "capybara-smollm2"
    assert request["deploy"]["target"] == "serverless-llm"


OTHER_HOSTILE = [
    (Pipeline.CONVERT, {"model": "$(id)"}, "model"),
    (Pipeline.CONVERT, {"model": "acme/m", "quant_types": "Q4_K_M,RM_RF"}, "quant_types"),
    (Pipeline.CONVERT, {"model": "/etc"}, "local path"),
    (Pipeline.DEPLOY, {"gguf_path": "hf://a/b/../../x.gguf", "name": "pirate"}, "gguf_path"),
    (Pipeline.DEPLOY, {"gguf_path": "hf://a/b/m.gguf", "name": "pirate; rm -rf /"}, "name"),
    (Pipeline.VALIDATE, {"dataset": "`id`"}, "dataset"),
]


@pytest.mark.parametrize(("pipeline", "inputs", "says"), OTHER_HOSTILE)
def test_hostile_inputs_of_the_other_workflows_start_nothing(
    deployments, tmp_path: Path, capsys, pipeline: Pipeline, inputs: dict, says: str
) -> None:
    deployment = {
        Pipeline.CONVERT: DeploymentName.CONVERT,
        Pipeline.DEPLOY: DeploymentName.DEPLOY,
        Pipeline.VALIDATE: DeploymentName.VALIDATE,
    }[pipeline]
    before = len(runs_of(deployment))
    payload = {**recorded("workflow_dispatch"), "inputs": inputs}
    assert main([pipeline.value, *event(tmp_path, "workflow_dispatch", payload, "7900")]) == 2
    error = capsys.readouterr().err
    assert "refused, nothing started" in error and says in error
    assert len(runs_of(deployment)) == before


def test_lmft_github_dispatch_is_the_same_entry(deployments, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import app

    before = len(runs_of(DeploymentName.VALIDATE))
    payload = {**recorded("workflow_dispatch"), "inputs": {"dataset": "examples/pirate_chat.jsonl"}}
    path = tmp_path / "event.json"
    path.write_text(json.dumps(payload))
    command = [
        "github-dispatch",
        "validate",
        "--event-file",
        str(path),
        "--event-name",
        "workflow_dispatch",
        "--run-id",
        "7300",
        "--wait-seconds",
        "0",
    ]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(app, command).exit_code == 0
    assert len(runs_of(DeploymentName.VALIDATE)) == before + 1


def test_the_summary_shows_the_estimate_the_run_published(
    deployments, tmp_path: Path, in_repository: Path
) -> None:
    """The finetune flow publishes its estimate as the `cost-estimate-figures` table artifact
    (tasks/reporting/summary.py); the summary of a later attempt renders it."""
    from prefect.client.schemas.actions import ArtifactCreate

    from schemas.costs import ESTIMATE_FIGURES_KEY, CostEstimate
    from schemas.request import Backend

    args = event(tmp_path, "workflow_dispatch", recorded("workflow_dispatch"), "7400")
    assert main(["train", *args, "--wait-seconds", "0"]) == 0
    [run] = [
        r
        for r in runs_of(DeploymentName.FINETUNE)
        if r.idempotency_key == "finetune:github:acme/lm-fine-tuning:run-7400"
    ]
    estimate = CostEstimate(
        backend=Backend.HF_JOBS,
        hardware="a10g-small",
        price_per_hour=1.0,
        low_usd=0.4,
        expected_usd=0.5,
        high_usd=0.75,
        expected_seconds=1800,
        low_seconds=1400,
        high_seconds=2700,
        timeout_seconds=3600,
        source="offline table (test)",
    )
    with get_client(sync_client=True) as client:
        client.create_artifact(
            ArtifactCreate(
                key=ESTIMATE_FIGURES_KEY,
                type="table",
                data=json.dumps([estimate.model_dump(mode="json")]),
                flow_run_id=run.id,
            )
        )
    assert main(["train", *args, "--wait-seconds", "0"]) == 0  # the re-run: same run, now estimated
    summary = in_repository.read_text().split("## `finetune/finetune`")[-1]
    assert "### Cost estimate" in summary and "a10g-small" in summary and "$0.50" in summary
