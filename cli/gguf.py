"""`lmft convert`: a Hugging Face model → GGUF files that passed the quality gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from cli.app import app, explain_validation_error, fail


@app.command()
def convert(
    model: Annotated[
        str,
        typer.Argument(help="Hugging Face model folder, Hub repo id, or 'smollm2-135m-instruct'."),
    ],
    adapter: Annotated[
        str | None, typer.Option(help="LoRA adapter folder to merge before converting.")
    ] = None,
    quant: Annotated[
        list[str] | None,
        typer.Option(help="Quantized variant to build (repeat). Default: Q4_K_M and Q8_0."),
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Where the GGUF files go. Default: $LMFT_HOME/gguf/<name>.")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="Dataset whose last rows are the held-out slice for the gate."),
    ] = None,
    max_nll_increase: Annotated[
        float | None, typer.Option(help="Largest ΔNLL (nats/token) a variant may show over f16.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Model name (file names, general.name).")] = None,
    hub_namespace: Annotated[
        str | None,
        typer.Option(help="Upload to {namespace}/{name}-GGUF on the Hub (needs HF_TOKEN)."),
    ] = None,
    hub_endpoint: Annotated[
        str | None, typer.Option(help="Hub endpoint (default https://huggingface.co).")
    ] = None,
) -> None:
    """Run the `convert` flow and print the quality gate's verdict per variant."""
    from schemas.request import DEFAULT_BASE_MODEL, DatasetSource
    from tasks.gguf import GGUFLineage, GGUFSettings, HubTarget, hash_dataset

    if model == DEFAULT_BASE_MODEL:
        from tasks.jobs.base_model import EMBEDDED_HUB_ID, materialize_embedded_model

        source, base = str(materialize_embedded_model()), EMBEDDED_HUB_ID
    else:
        source, base = model, model
    try:
        settings = GGUFSettings(
            **({"quant_types": quant} if quant else {}),
            **({"max_nll_increase": max_nll_increase} if max_nll_increase is not None else {}),
        )
        held_out = DatasetSource(path=dataset) if dataset else None
        lineage = GGUFLineage(
            base_model=base,
            name=name,
            dataset=dataset,
            dataset_sha256=hash_dataset(held_out) if held_out else None,
        )
        hub = (
            HubTarget(
                namespace=hub_namespace,
                name=name or Path(model.rstrip("/")).name,
                endpoint=hub_endpoint,
            )
            if hub_namespace
            else None
        )
    except ValidationError as exc:
        raise fail(explain_validation_error(exc)) from None

    from flows.convert import convert as convert_flow

    state = convert_flow(
        source,
        lineage=lineage,
        settings=settings,
        adapter=adapter,
        output_dir=str(output_dir) if output_dir else None,
        dataset=held_out,
        hub=hub,
        return_state=True,
    )
    if not state.is_completed():
        raise fail(f"the convert flow ended {state.name}: {state.message}", code=1)
    result = state.result()
    quality = result.quality
    typer.echo("")
    for check in (quality.reference, *quality.variants):
        verdict = "pass" if check.passed else "FAIL " + "; ".join(check.reasons)
        typer.echo(
            f"  {check.quant_type.value:<7} {check.size_bytes / 1e6:8.1f} MB  ΔNLL {check.delta_nll:+.4f}  "
            f"{check.tokens_per_second:6.1f} tok/s  {verdict}"
        )
    typer.secho(quality.decision, fg=typer.colors.GREEN, bold=True)
    typer.echo(f"  chosen file   {quality.chosen}")
    if result.hub_url:
        typer.echo(f"  uploaded to   {result.hub_url}")
