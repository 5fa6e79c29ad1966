"""`lmft validate`: check a dataset for a training method, without starting anything."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from cli.app import app, explain_validation_error, fail


@app.command()
def validate(
    dataset: Annotated[
        str,
        typer.Argument(help="Local file/folder (jsonl, json, parquet, csv; .gz too) or Hub id."),
    ],
    method: Annotated[str, typer.Option(help="sft | dpo | grpo | kto")] = "sft",
    model: Annotated[
        str | None, typer.Option(help="Base model whose tokenizer counts the tokens.")
    ] = None,
    split: Annotated[str, typer.Option(help="Hub dataset split.")] = "train",
    config: Annotated[str | None, typer.Option(help="Hub dataset configuration.")] = None,
    revision: Annotated[str | None, typer.Option(help="Hub dataset revision.")] = None,
    column_map: Annotated[
        str | None, typer.Option(help='JSON renames, e.g. \'{"instruction": "prompt"}\'.')
    ] = None,
    max_length: Annotated[
        int | None, typer.Option(help="Longest tokenised row the training keeps.")
    ] = None,
    min_rows: Annotated[int | None, typer.Option(help="Fewer rows than this is an error.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Validate DATASET for METHOD; exit 1 when it has errors."""
    import json

    from schemas.request import FineTuneRequest
    from tasks.validation import DEFAULT_MIN_ROWS, check_dataset, render_markdown

    data: dict = {"dataset": {"path": dataset, "split": split}, "method": method}
    for key, value in (("config", config), ("revision", revision)):
        if value is not None:
            data["dataset"][key] = value
    if column_map:
        try:
            data["dataset"]["column_map"] = json.loads(column_map)
        except json.JSONDecodeError as exc:
            raise fail(f"--column-map is not a JSON object: {exc}") from None
    if model:
        data["base_model"] = model
    if max_length is not None:
        data["hyperparameters"] = {"max_length": max_length}
    try:
        request = FineTuneRequest.model_validate(data)
    except ValidationError as exc:
        raise fail(explain_validation_error(exc)) from None
    report = check_dataset(request, min_rows=DEFAULT_MIN_ROWS if min_rows is None else min_rows)
    typer.echo(report.model_dump_json(indent=2) if as_json else render_markdown(report))
    if report.errors:
        raise typer.Exit(1)
