"""The `lmft` typer application; each command starts a flow and prints its outcome."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
import yaml
from pydantic import ValidationError

app = typer.Typer(
    name="lmft",
    help="Fine-tune a language model with Prefect flows, convert it to GGUF, serve it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# Options shared by the commands that take a fine-tuning request (`run`, `estimate`).
ConfigArgument = Annotated[
    Path | None, typer.Argument(help="YAML/JSON file with a FineTuneRequest.")
]
ModelOption = Annotated[
    str | None, typer.Option(help="Base model: Hub id, local folder or 'smollm2-135m-instruct'.")
]
DatasetOption = Annotated[str | None, typer.Option(help="Dataset: local file/folder or Hub id.")]
MethodOption = Annotated[str | None, typer.Option(help="sft | dpo | grpo | kto")]


@app.callback()
def main() -> None:
    """lm-fine-tuning: validate, estimate, train, convert and deploy, as Prefect flows."""
    # A local ephemeral Prefect server has no network to send telemetry to.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `message` to stderr and return the Exit to raise."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def explain_validation_error(exc: ValidationError) -> str:
    """One line per refused field: where, and why."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "request"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {msg}")
    return "invalid request:\n" + "\n".join(lines)


def load_config(path: Path) -> dict:
    """Read a request from a YAML or JSON file; relative dataset/model paths resolve against it."""
    if not path.exists():
        raise fail(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise fail(f"config file {path} is not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise fail(f"config file {path} must hold a mapping of request fields")
    dataset = data.get("dataset")
    if isinstance(dataset, str):
        dataset = data["dataset"] = {"path": dataset}
    if isinstance(dataset, dict) and isinstance(dataset.get("path"), str):
        candidate = path.parent / dataset["path"]
        if not Path(dataset["path"]).is_absolute() and candidate.exists():
            dataset["path"] = str(candidate)
    return data


def request_from_cli(
    config: Path | None, dataset: str | None, fields: dict, *, max_steps: int | None = None
):
    """A `FineTuneRequest` from a config file plus command-line options (options win)."""
    from schemas.request import FineTuneRequest

    data = load_config(config) if config else {}
    if dataset:
        data["dataset"] = {**(data.get("dataset") or {}), "path": dataset}
    if "dataset" not in data:
        raise fail("give a config file or --dataset")
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        elif value is not None:
            data[key] = value
    if max_steps is not None:
        data.setdefault("hyperparameters", {})["max_steps"] = max_steps
    try:
        return FineTuneRequest.model_validate(data)
    except ValidationError as exc:
        raise fail(explain_validation_error(exc)) from None
