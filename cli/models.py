"""`lmft models list` and `lmft models show NAME`: the model registry, where each model serves."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.app import app, fail

models_app = typer.Typer(
    help="The model registry: every trained model, its lineage and figures, where it serves.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@models_app.command("list")
def models_list() -> None:
    """Every registered model, newest first: lineage, eval loss, cost, and where it serves."""
    from tasks.registry import model_registry
    from tasks.registry.store import rows_for_table

    try:
        registry = model_registry()
        rows = rows_for_table(registry.entries())
    except (RuntimeError, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"registry      {registry.describe()}")
    if not rows:
        typer.echo("no model is registered yet: every `lmft run` registers the model it trains")
        return
    columns = ["name", "id", "created", "base model", "dataset sha256", "eval loss", "serving"]
    table = [{k: str(r[k] if r[k] is not None else "n/a") for k in columns} for r in rows]
    widths = {k: max(len(k), *(len(r[k]) for r in table)) for k in columns}
    typer.echo("")
    typer.echo("  ".join(k.ljust(w) for k, w in widths.items()))
    for row in table:
        typer.echo("  ".join(row[k].ljust(w) for k, w in widths.items()))


@models_app.command("show")
def models_show(
    name: Annotated[str, typer.Argument(help="Model name (output or served name) or registry id.")],
) -> None:
    """Every registry entry of NAME: lineage, figures, GGUF files, promotion, deploys."""
    from tasks.registry import model_registry

    try:
        registry = model_registry()
        found = registry.find(name)
    except (RuntimeError, ValueError) as exc:
        raise fail(str(exc)) from None
    if not found:
        raise fail(
            f"no model named {name!r} in the registry at {registry.describe()} (see `lmft models list`)",
            code=1,
        )
    for model in found:
        typer.echo("")
        typer.secho(f"{model.name}  {model.id}", bold=True)
        for label, value in (
            ("created", model.created_at.isoformat(timespec="seconds")),
            ("base model", model.base_model),
            ("dataset", f"{model.dataset} (sha256 {model.dataset_sha256 or 'n/a'})"),
            ("method", model.method),
            (
                "flow run",
                model.flow_run_id
                + (
                    f" (retrain run {model.parent_flow_run_id})" if model.parent_flow_run_id else ""
                ),
            ),
            ("jobs", ", ".join(model.jobs) or "n/a"),
            ("cost", "n/a" if model.cost_usd is None else f"${model.cost_usd:.2f}"),
            (
                "loss",
                f"final {_fmt(model.final_loss)}, eval {_fmt(model.eval_loss)} (base {_fmt(model.base_eval_loss)})",
            ),
            ("model", model.model_path or "n/a"),
            ("gguf", model.gguf_path or "not converted"),
            (
                "promotion",
                f"{model.promotion.promotion.value}: {model.promotion.reason}"
                if model.promotion
                else "n/a",
            ),
            ("serving", ", ".join(model.serving) or "not serving"),
        ):
            typer.echo(f"  {label:<12}{value}")
        for variant in model.variants:
            verdict = "pass" if variant.passed else "fail" if variant.passed is False else "n/a"
            chosen = " (chosen)" if variant.chosen else ""
            typer.echo(
                f"  variant     {variant.quant_type}{chosen}: {variant.size_bytes / 1e6:.1f} MB, "
                f"NLL {_fmt(variant.mean_nll)}, ΔNLL {_fmt(variant.delta_nll)}, {verdict}"
            )
        for event in model.deployments:
            what = "rollback to it" if event.rollback else "deploy"
            replaced = f", replaced {event.replaced_model_id}" if event.replaced_model_id else ""
            where = event.pull_request_url or event.commit_sha or event.url or ""
            typer.echo(
                f"  {what:<12}{event.deployed_at.isoformat(timespec='seconds')} {event.target}/{event.name} "
                f"{event.status} by {event.deployed_by}{replaced} {where}".rstrip()
            )
