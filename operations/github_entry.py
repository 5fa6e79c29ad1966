"""Start a pipeline deployment from a GitHub Actions event, follow it, and summarise it.

    python -m operations.github_entry train      # in train-model.yml
    python -m operations.github_entry validate   # validate-dataset.yml
    python -m operations.github_entry convert    # convert-to-gguf.yml
    python -m operations.github_entry deploy     # deploy-to-serverless-llm.yml
    lmft github-dispatch train --event-file event.json --run-id 42   # the same, by hand

The inputs are read from the event payload GitHub writes for the job (`$GITHUB_EVENT_PATH`):
`inputs` of a `workflow_dispatch`, `client_payload` of a `repository_dispatch` (type
`trigger_training`). They never pass through a shell, so a workflow needs no `${{ }}` of
them in `run:`. Each input is checked with the pydantic models the flow itself takes
(`FineTuneRequest`, `GGUFSettings`, ...) before anything starts; a refusal names the input
and the reason, and exits 2.

The run is created through the Prefect API with an idempotency key made of the repository
and `GITHUB_RUN_ID`, which a re-run of the workflow keeps (only `GITHUB_RUN_ATTEMPT`
changes): a re-run finds the run the first attempt started instead of paying for another.
The `finetune` run also gets it as its `idempotency_key`, the label of its training job.

The step summary (`$GITHUB_STEP_SUMMARY`) gets the run's UI link, its state, the cost
estimate the flow published, its links and result. Exit code: 0 completed (or still going
when `--wait-seconds` ran out), 1 failed, crashed or cancelled, 2 refused before starting.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterIdempotencyKey,
)
from prefect.client.schemas.objects import Artifact, FlowRun
from prefect.client.schemas.sorting import ArtifactSort
from prefect.exceptions import MissingResult, ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL
from prefect.utilities.urls import url_for
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.costs import ESTIMATE_FIGURES_KEY, CostEstimate
from schemas.flows import DeploymentName
from schemas.gguf import GGUFSettings
from schemas.request import Backend, FineTuneRequest, check_repo_id, looks_like_local_path
from schemas.serving import LOCAL_TARGET, MODEL_NAME_PATTERN

TRIGGER_TRAINING = "trigger_training"
"""The `repository_dispatch` event type that asks for a fine-tune (serverless-llm sends it)."""
MAX_INPUT_CHARS = 256
MAX_CONFIG_CHARS = 8192
TAGS = ["github"]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Pipeline(str, Enum):
    """What a workflow starts: one pipeline deployment each."""

    TRAIN = "train"
    VALIDATE = "validate"
    CONVERT = "convert"
    DEPLOY = "deploy"


class InputRefused(ValueError):
    """An event's inputs cannot start a run; the message names the input and the reason."""


# -- the inputs of each workflow --------------------------------------------------------------


def _plain(value: str) -> str:
    if len(value) > MAX_INPUT_CHARS:
        raise ValueError(f"{len(value)} characters, at most {MAX_INPUT_CHARS}")
    if _CONTROL.search(value):
        raise ValueError("control characters (newlines, escapes) are not allowed")
    return value.strip()


class _Inputs(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _bounded(cls, value: Any, info) -> Any:
        if not isinstance(value, str):
            return value
        if info.field_name == "config_json":
            if len(value) > MAX_CONFIG_CHARS:
                raise ValueError(f"{len(value)} characters, at most {MAX_CONFIG_CHARS}")
            return value
        return _plain(value)

    def config(self) -> dict[str, Any]:
        raw = getattr(self, "config_json", "") or ""
        if not raw.strip():
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputRefused(
                f"config_json: not JSON ({exc.msg} at character {exc.pos})"
            ) from None
        if not isinstance(value, dict):
            raise InputRefused("config_json: must be a JSON object of request fields")
        return value


def _repository_path(path: str, field: str) -> None:
    """A local path from GitHub must stay inside the checkout the worker clones too."""
    if not looks_like_local_path(path):
        return
    if Path(path).is_absolute() or path.startswith("~") or ".." in Path(path).parts:
        raise InputRefused(
            f"{field}: {path!r} is outside the repository; give a path relative to its root "
            "(e.g. examples/pirate_chat.jsonl) or a Hub dataset id"
        )


class TrainInputs(_Inputs):
    """`train-model.yml`'s inputs, and `trigger_training`'s client_payload."""

    model_name: Annotated[
        str, Field(description="Base model: Hub id or 'smollm2-135m-instruct'.")
    ] = ""
    dataset: Annotated[str, Field(description="Dataset: Hub id or a path in this repository.")]
    training_method: Annotated[str, Field(description="sft | dpo | grpo | kto")] = ""
    hardware: Annotated[
        str,
        Field(description="'local' (the worker's machine), 'auto' or a Hugging Face Jobs flavor."),
    ] = "local"
    config_json: Annotated[
        str, Field(description="More FineTuneRequest fields, as a JSON object.")
    ] = ""

    def request(self) -> FineTuneRequest:
        values = self.config()
        values["dataset"] = {**values.get("dataset", {}), "path": self.dataset}
        if self.model_name:
            values["base_model"] = self.model_name
        if self.training_method:
            values["method"] = self.training_method
        hardware = self.hardware or "local"
        if hardware == LOCAL_TARGET:
            values.setdefault("backend", Backend.LOCAL.value)
        else:
            values["backend"], values["hardware"] = Backend.HF_JOBS.value, hardware
        _repository_path(self.dataset, "dataset")
        return _validated(FineTuneRequest, values, rename=_TRAIN_FIELDS)

    def parameters(self, key: str) -> dict[str, Any]:
        return {"request": self.request().model_dump(mode="json"), "idempotency_key": key}


_TRAIN_FIELDS = {
    "base_model": "model_name",
    "dataset.path": "dataset",
    "method": "training_method",
    "backend": "hardware",
}


class ValidateInputs(_Inputs):
    """`validate-dataset.yml`'s inputs: the dataset checked for a method and base model's tokenizer."""

    dataset: str
    training_method: str = ""
    model_name: str = ""
    config_json: str = ""

    def parameters(self, key: str) -> dict[str, Any]:
        train = TrainInputs(
            model_name=self.model_name,
            dataset=self.dataset,
            training_method=self.training_method,
            config_json=self.config_json,
        )
        return {"request": train.request().model_dump(mode="json")}


class ConvertInputs(_Inputs):
    """`convert-to-gguf.yml`'s inputs: a Hub model and the quantized variants to build."""

    model: Annotated[str, Field(description="Hugging Face model id to convert.")]
    quant_types: Annotated[str, Field(description="Comma-separated, e.g. Q4_K_M,Q8_0.")] = ""
    config_json: Annotated[str, Field(description="More GGUFSettings fields, as JSON.")] = ""

    def parameters(self, key: str) -> dict[str, Any]:
        settings = self.config()
        if self.quant_types:
            settings["quant_types"] = [q.strip() for q in self.quant_types.split(",") if q.strip()]
        if looks_like_local_path(self.model):
            raise InputRefused(
                f"model: {self.model!r} is a local path; give a Hugging Face model id (namespace/name)"
            )
        try:
            check_repo_id(self.model, field="model")
        except ValueError as exc:
            raise InputRefused(str(exc)) from None
        gguf = _validated(GGUFSettings, settings, rename={"quant_types": "quant_types"})
        return {"model": self.model, "settings": gguf.model_dump(mode="json")}


class DeployInputs(_Inputs):
    """`deploy-to-serverless-llm.yml`'s inputs: a GGUF on the Hub and the name to serve it as."""

    gguf_path: Annotated[str, Field(description="hf://owner/repo/file.gguf")]
    name: Annotated[
        str, Field(description="Model name on serverless-llm (2-40 lowercase letters and digits).")
    ]
    target: Annotated[str, Field(description="Name of the saved ServerlessLLMTarget block.")] = (
        "serverless-llm"
    )
    hf_repo: str = ""

    def parameters(self, key: str) -> dict[str, Any]:
        if (
            not re.fullmatch(r"hf://[\w.-]+/[\w.-]+/[\w./-]+\.gguf", self.gguf_path)
            or ".." in self.gguf_path
        ):
            raise InputRefused(
                f"gguf_path: {self.gguf_path!r} is not hf://owner/repo/file.gguf (a GGUF already on the Hub)"
            )
        if not MODEL_NAME_PATTERN.fullmatch(self.name):
            raise InputRefused(
                f"name: {self.name!r} is not a serverless-llm model name (2-40 lowercase letters and digits, "
                "starting with a letter)"
            )
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,99}", self.target):
            raise InputRefused(
                f"target: {self.target!r} is not a block name (lowercase, digits, dashes)"
            )
        parameters: dict[str, Any] = {
            "gguf_path": self.gguf_path,
            "name": self.name,
            "target": self.target,
        }
        if self.hf_repo:
            try:
                parameters["hf_repo"] = check_repo_id(self.hf_repo, field="hf_repo")
            except ValueError as exc:
                raise InputRefused(str(exc)) from None
        return parameters


PIPELINES: dict[Pipeline, tuple[type[_Inputs], DeploymentName]] = {
    Pipeline.TRAIN: (TrainInputs, DeploymentName.FINETUNE),
    Pipeline.VALIDATE: (ValidateInputs, DeploymentName.VALIDATE),
    Pipeline.CONVERT: (ConvertInputs, DeploymentName.CONVERT),
    Pipeline.DEPLOY: (DeployInputs, DeploymentName.DEPLOY),
}


def _validated(model: type[BaseModel], values: dict[str, Any], *, rename: dict[str, str]) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            where = ".".join(loc)
            if where in rename:
                where = rename[where]
            elif loc and loc[0] in rename:
                where = ".".join([rename[loc[0]], *loc[1:]])
            else:
                where = f"config_json.{where}" if where else "config_json"
            lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise InputRefused("; ".join(lines)) from None


# -- the event -------------------------------------------------------------------------------


class GitHubEvent(BaseModel):
    """What this module reads of an Actions job: the event and the run that carries it."""

    name: str = Field(description="GITHUB_EVENT_NAME: workflow_dispatch or repository_dispatch.")
    payload: dict[str, Any]
    repository: str
    run_id: str

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt of one workflow run (GITHUB_RUN_ATTEMPT is left out)."""
        return f"github:{self.repository}:run-{self.run_id}"

    def inputs(self, pipeline: Pipeline) -> dict[str, Any]:
        if self.name == "workflow_dispatch":
            return dict(self.payload.get("inputs") or {})
        if self.name == "repository_dispatch":
            if pipeline is not Pipeline.TRAIN or self.payload.get("action") != TRIGGER_TRAINING:
                raise InputRefused(
                    f"repository_dispatch of type {self.payload.get('action')!r} starts nothing here; "
                    f"send event_type {TRIGGER_TRAINING!r} to train"
                )
            payload = dict(self.payload.get("client_payload") or {})
            if isinstance(payload.get("config"), dict):  # an object instead of a JSON string
                payload["config_json"] = json.dumps(payload.pop("config"))
            return payload
        raise InputRefused(
            f"event {self.name!r} carries no inputs; run the workflow with `gh workflow run` "
            "(workflow_dispatch) or send a repository_dispatch"
        )

    @classmethod
    def from_actions_env(
        cls,
        *,
        event_file: Path | None = None,
        event_name: str | None = None,
        run_id: str | None = None,
    ) -> GitHubEvent:
        path = event_file or (
            Path(os.environ["GITHUB_EVENT_PATH"]) if os.environ.get("GITHUB_EVENT_PATH") else None
        )
        name = event_name or os.environ.get("GITHUB_EVENT_NAME")
        run = run_id or os.environ.get("GITHUB_RUN_ID")
        missing = [
            n
            for n, v in (
                ("GITHUB_EVENT_PATH", path),
                ("GITHUB_EVENT_NAME", name),
                ("GITHUB_RUN_ID", run),
            )
            if not v
        ]
        if missing:
            raise InputRefused(
                f"{', '.join(missing)} not set: run inside GitHub Actions, or pass --event-file, --event-name and --run-id"
            )
        payload = json.loads(Path(path).read_text())
        repository = os.environ.get("GITHUB_REPOSITORY") or (payload.get("repository") or {}).get(
            "full_name", ""
        )
        return cls(name=name, payload=payload, repository=repository or "local", run_id=str(run))


def parameters_for(pipeline: Pipeline, event: GitHubEvent) -> dict[str, Any]:
    """The deployment's parameters from the event's inputs, or `InputRefused` saying why not."""
    inputs_model, _ = PIPELINES[pipeline]
    raw = event.inputs(pipeline)
    unknown = sorted(set(raw) - set(inputs_model.model_fields))
    if unknown:
        raise InputRefused(
            f"unknown input(s) {', '.join(map(repr, unknown))}; this workflow takes "
            f"{', '.join(inputs_model.model_fields)}"
        )
    not_text = [k for k, v in raw.items() if not isinstance(v, str)]
    if not_text:
        raise InputRefused(f"input(s) {', '.join(not_text)} must be strings")
    try:
        inputs = inputs_model.model_validate(raw)
    except ValidationError as exc:
        raise InputRefused(
            "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
        ) from None
    return inputs.parameters(event.idempotency_key)


# -- starting and following the run ----------------------------------------------------------


class RunOutcome(BaseModel):
    """What the step summary reports."""

    deployment: str
    flow_run_id: str
    flow_run_name: str
    ui_url: str
    state: str
    final: bool
    reused: bool = Field(description="The idempotency key found a run an earlier attempt started.")
    state_message: str | None = None
    estimate: CostEstimate | None = None
    links: list[str] = []
    markdown: list[str] = []
    result: Any = None


def start_run(
    client: SyncPrefectClient, deployment: DeploymentName, parameters: dict[str, Any], key: str
) -> tuple[FlowRun, bool]:
    """Create the run, or find the one an earlier attempt created with `key`; True when found."""
    try:
        found = client.read_deployment_by_name(deployment.value)
    except ObjectNotFound:
        raise InputRefused(
            f"deployment {deployment.value!r} not found on {PREFECT_API_URL.value()}: "
            "run `prefect deploy --all`"
        ) from None
    earlier = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[found.id]),
            idempotency_key=FlowRunFilterIdempotencyKey(any_=[key]),
        ),
        limit=1,
    )
    if earlier:
        return earlier[0], True
    # The key also makes the server return the existing run when two attempts race here.
    run = client.create_flow_run_from_deployment(
        found.id, parameters=parameters, idempotency_key=key, tags=TAGS
    )
    return run, False


def follow_run(
    client: SyncPrefectClient, run: FlowRun, *, wait_seconds: float, poll_seconds: float = 5.0
) -> FlowRun:
    """Poll the run until it is final or `wait_seconds` pass; print each state change.

    `prefect.flow_runs.wait_for_flow_run` waits the same way but stays silent while it waits
    (a paused run waiting for approval should show up in the job's log) and raises on timeout.
    """
    deadline = time.monotonic() + wait_seconds
    seen = None
    while True:
        state = run.state
        if state is not None and state.name != seen:
            seen = state.name
            print(
                f"flow run {run.name}: {state.name}"
                + (f" ({state.message})" if state.message else ""),
                flush=True,
            )
        if (state is not None and state.is_final()) or time.monotonic() >= deadline:
            return run
        time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))
        run = client.read_flow_run(run.id)


def read_outcome(
    client: SyncPrefectClient, deployment: DeploymentName, run: FlowRun, *, reused: bool
) -> RunOutcome:
    """The run's state, estimate, links, markdown reports and (when persisted) its return value."""
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])),
        sort=ArtifactSort.CREATED_DESC,
    )
    state = run.state
    outcome = RunOutcome(
        deployment=deployment.value,
        flow_run_id=str(run.id),
        flow_run_name=run.name,
        ui_url=url_for("flow-run", obj_id=run.id) or str(run.id),
        state=state.name if state else "Pending",
        final=bool(state and state.is_final()),
        reused=reused,
        state_message=state.message if state else None,
        estimate=_estimate(artifacts),
        links=[a.data for a in artifacts if a.type == "link" and isinstance(a.data, str)],
        markdown=_latest_markdown(artifacts),
    )
    if state is not None and state.is_completed():
        try:
            value = state.result(raise_on_failure=False)
        except (MissingResult, OSError, ValueError):  # not persisted, or not readable from here
            value = None
        outcome.result = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return outcome


def _estimate(artifacts: list[Artifact]) -> CostEstimate | None:
    found = next((a for a in artifacts if a.key == ESTIMATE_FIGURES_KEY), None)
    if found is None:
        return None
    rows = json.loads(found.data) if isinstance(found.data, str) else found.data
    return CostEstimate.model_validate(rows[0]) if rows else None


def _latest_markdown(artifacts: list[Artifact]) -> list[str]:
    """The newest version of each keyed markdown artifact (reports, summaries), oldest key first."""
    latest: dict[str, str] = {}
    for artifact in artifacts:
        if artifact.type == "markdown" and isinstance(artifact.data, str):
            latest.setdefault(artifact.key or str(artifact.id), artifact.data)
    return list(reversed(latest.values()))


def summary_markdown(outcome: RunOutcome) -> str:
    """The step summary: what started, where to watch it, how it ended."""
    lines = [
        f"## `{outcome.deployment}`: [{outcome.flow_run_name}]({outcome.ui_url})",
        "",
        f"- **state**: {outcome.state}"
        + (f" — {outcome.state_message}" if outcome.state_message else ""),
        f"- **flow run**: {outcome.ui_url}",
    ]
    if outcome.reused:
        lines.append(
            "- an earlier attempt of this workflow run started it (same idempotency key); nothing new was started"
        )
    if not outcome.final:
        lines.append(
            "- still going when this job stopped following it; the Prefect UI shows the rest"
        )
    lines += [f"- {link}" for link in outcome.links]
    if outcome.estimate is not None:
        lines += ["", "### Cost estimate", "", outcome.estimate.markdown()]
    for text in outcome.markdown:
        lines += ["", text]
    if outcome.result is not None:
        body = json.dumps(outcome.result, indent=2, default=str)
        if len(body) > 20_000:
            body = body[:20_000] + "\n… (truncated; the full result is in the Prefect UI)"
        lines += ["", "### Result", "", "```json", body, "```"]
    return "\n".join(lines) + "\n"


def write_step_summary(text: str, path: Path | None = None) -> None:
    target = path or (
        Path(os.environ["GITHUB_STEP_SUMMARY"]) if os.environ.get("GITHUB_STEP_SUMMARY") else None
    )
    if target is None:
        print(text)
        return
    with target.open("a", encoding="utf-8") as summary:
        summary.write(text)


def dispatch(
    pipeline: Pipeline, event: GitHubEvent, *, wait_seconds: float, poll_seconds: float = 5.0
) -> RunOutcome:
    """Validate the event's inputs, start (or find) the run, follow it, return its outcome."""
    _, deployment = PIPELINES[pipeline]
    parameters = parameters_for(pipeline, event)
    key = f"{deployment.flow_name}:{event.idempotency_key}"
    with get_client(sync_client=True) as client:
        run, reused = start_run(client, deployment, parameters, key)
        print(
            f"{'found' if reused else 'started'} flow run {run.name} of {deployment.value}: {url_for('flow-run', obj_id=run.id)}",
            flush=True,
        )
        run = follow_run(client, run, wait_seconds=wait_seconds, poll_seconds=poll_seconds)
        return read_outcome(client, deployment, run, reused=reused)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m operations.github_entry", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("pipeline", type=Pipeline, choices=list(Pipeline))
    parser.add_argument("--event-file", type=Path, help="Default: $GITHUB_EVENT_PATH.")
    parser.add_argument("--event-name", help="Default: $GITHUB_EVENT_NAME.")
    parser.add_argument("--run-id", help="Default: $GITHUB_RUN_ID.")
    parser.add_argument(
        "--wait-seconds", type=float, default=3600, help="Follow the run at most this long."
    )
    parser.add_argument("--poll-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    try:
        event = GitHubEvent.from_actions_env(
            event_file=args.event_file, event_name=args.event_name, run_id=args.run_id
        )
        outcome = dispatch(
            args.pipeline, event, wait_seconds=args.wait_seconds, poll_seconds=args.poll_seconds
        )
    except InputRefused as exc:
        message = f"refused, nothing started: {exc}"
        print(f"error: {message}", file=sys.stderr)
        write_step_summary(f"## {args.pipeline.value}: {message}\n")
        return 2
    except (httpx.TransportError, PrefectHTTPStatusError) as exc:
        message = f"the Prefect API at {PREFECT_API_URL.value()} did not answer ({exc}); check PREFECT_API_URL and the key"
        print(f"error: {message}", file=sys.stderr)
        write_step_summary(f"## {args.pipeline.value}: {message}\n")
        return 2
    write_step_summary(summary_markdown(outcome))
    failed = outcome.final and outcome.state not in ("Completed",)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
