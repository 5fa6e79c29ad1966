"""`lmft estimate`, `lmft costs` and `lmft budget set|show`: money before and after training."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from cli.app import (
    ConfigArgument,
    DatasetOption,
    MethodOption,
    ModelOption,
    app,
    explain_validation_error,
    fail,
    request_from_cli,
)

budget_app = typer.Typer(
    help="Show or save the BudgetPolicy block (monthly limit, approval threshold).",
    no_args_is_help=True,
)
app.add_typer(budget_app, name="budget")


@app.command()
def estimate(
    config: ConfigArgument = None,
    model: ModelOption = None,
    dataset: DatasetOption = None,
    method: MethodOption = None,
    backend: Annotated[str, typer.Option(help="local | hf-jobs")] = "hf-jobs",
    hardware: Annotated[
        str | None, typer.Option(help="'auto' or an HF Jobs flavor, e.g. a10g-small.")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after this many optimizer steps.")
    ] = None,
    full: Annotated[bool, typer.Option("--full", help="Full fine-tuning instead of LoRA.")] = False,
    offline: Annotated[
        bool, typer.Option("--offline", help="Use the dated price table, not the live catalog.")
    ] = False,
) -> None:
    """Estimate hardware, time and cost of a run without starting it."""
    from tasks.costs import estimate_request, load_catalog
    from tasks.validation import raise_on_errors, validate_dataset

    fields = {"base_model": model, "method": method, "backend": backend, "hardware": hardware}
    if full:
        fields["lora"] = {"enabled": False}
    request = request_from_cli(config, dataset, fields, max_steps=max_steps)
    try:
        report = validate_dataset.fn(request)
        raise_on_errors(report)
        result = estimate_request(request, report, catalog=load_catalog(live=not offline))
    except (ValueError, RuntimeError) as exc:
        raise fail(str(exc)) from None
    typer.echo(result.markdown())


@app.command()
def costs(
    month: Annotated[str | None, typer.Option(help="YYYY-MM (UTC); default this month.")] = None,
) -> None:
    """Month-to-date spend, open holds, and each run's estimate next to its actual cost."""
    from tasks.costs.report import build_cost_report

    if month is not None and not (
        len(month) == 7 and month[4] == "-" and month.replace("-", "").isdigit()
    ):
        raise fail(f"--month: {month!r} is not YYYY-MM")
    report = build_cost_report(month)
    t = report.totals
    typer.echo(f"ledger        {report.ledger}")
    typer.echo(f"month         {t.month}")
    typer.echo(f"spent         ${t.spent_usd:.2f}")
    typer.echo(f"held          ${t.reserved_usd:.2f} by {t.open_reservations} open runs")
    if t.limit_usd is None:
        typer.echo(f"budget left   n/a ({report.note})")
    else:
        typer.echo(f"budget left   ${report.left_usd:.2f} of ${t.limit_usd:.2f}")
    rows = report.rows()
    if rows:
        widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in rows[0]}
        typer.echo("")
        typer.echo("  ".join(k.ljust(w) for k, w in widths.items()))
        for row in rows:
            typer.echo("  ".join(row[k].ljust(w) for k, w in widths.items()))


@budget_app.command("set")
def budget_set(
    monthly_limit: Annotated[float, typer.Option(help="USD per calendar month (UTC).")],
    approval_threshold: Annotated[
        float, typer.Option(help="Runs estimated above this (high end) wait for approval.")
    ],
    per_job_max: Annotated[
        float, typer.Option(help="No run may be estimated above this (high end).")
    ],
    approval_timeout: Annotated[
        int, typer.Option(help="Seconds to wait for approval; then rejected.")
    ] = 24 * 3600,
    ledger_url: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL of the ledger (default SQLite in $LMFT_HOME)."),
    ] = None,
    require_approval_for_all_runs: Annotated[
        bool,
        typer.Option(
            "--require-approval-for-all-runs/--approval-above-threshold-only",
            help="Every run waits for a human approval, free local runs too (default: only runs above the threshold).",
        ),
    ] = False,
    name: Annotated[str, typer.Option(help="Block document name.")] = "default",
) -> None:
    """Save the BudgetPolicy block that runs are gated by."""
    from blocks.budget import BudgetPolicy

    try:
        policy = BudgetPolicy(
            monthly_limit_usd=monthly_limit,
            approval_threshold_usd=approval_threshold,
            per_job_max_usd=per_job_max,
            approval_timeout_seconds=approval_timeout,
            ledger_url=ledger_url,
            require_approval_for_all_runs=require_approval_for_all_runs,
        )
    except ValidationError as exc:
        raise fail(explain_validation_error(exc)) from None
    try:
        policy.save(name, overwrite=True)
    except RuntimeError as exc:  # the Prefect API could not be reached
        raise fail(
            f"cannot save the BudgetPolicy block ({exc}); start `prefect server start` and set PREFECT_API_URL"
        ) from None
    approval = (
        "every run needs approval"
        if require_approval_for_all_runs
        else f"approval above ${approval_threshold:.2f}"
    )
    typer.echo(
        f"saved BudgetPolicy {name!r}: ${monthly_limit:.2f}/month, {approval}, per job ≤ ${per_job_max:.2f}"
    )


@budget_app.command("show")
def budget_show(
    name: Annotated[str, typer.Option(help="Block document name.")] = "default",
) -> None:
    """Print the saved BudgetPolicy and where its ledger lives."""
    from blocks.budget import BudgetPolicyMissing, BudgetPolicyUnavailable, load_budget_policy
    from tasks.costs.budget import ledger_for

    try:
        policy = load_budget_policy(name)
    except (BudgetPolicyMissing, BudgetPolicyUnavailable) as exc:
        raise fail(str(exc), code=1) from None
    typer.echo(f"monthly limit        ${policy.monthly_limit_usd:.2f}")
    typer.echo(f"approval threshold   ${policy.approval_threshold_usd:.2f}")
    typer.echo(f"per-job maximum      ${policy.per_job_max_usd:.2f}")
    typer.echo(f"approval timeout     {policy.approval_timeout_seconds} s")
    typer.echo(
        f"approve every run    {'yes, free local runs too' if policy.require_approval_for_all_runs else 'no'}"
    )
    typer.echo(f"ledger               {ledger_for(policy).describe()}")


@budget_app.command("release")
def budget_release(
    target: Annotated[
        str,
        typer.Argument(
            help="Flow run id (or reservation id, or run key) whose open hold to release."
        ),
    ],
    reason: Annotated[
        str, typer.Option(help="Why the hold is released by hand (kept in the ledger).")
    ],
    operator: Annotated[
        str | None, typer.Option(help="Who releases it (default: the login name).")
    ] = None,
    name: Annotated[str, typer.Option(help="BudgetPolicy block name.")] = "default",
) -> None:
    """Release a run's open budget hold by hand; what its job already ran stays spent. Audited."""
    import getpass

    from blocks.budget import BudgetPolicyMissing, BudgetPolicyUnavailable
    from tasks.costs.budget import release_holds_by_hand

    if not reason.strip():
        raise fail("--reason: say why the hold is released (it is kept in the ledger)")
    who = operator or getpass.getuser()
    try:
        released = release_holds_by_hand(target, operator=who, reason=reason, policy_name=name)
    except (BudgetPolicyMissing, BudgetPolicyUnavailable) as exc:
        raise fail(str(exc), code=1) from None
    if not released:
        raise fail(f"no open budget hold for {target!r}; `lmft costs` lists the open runs", code=1)
    for hold in released:
        typer.echo(
            f"released the ${hold.high_usd:.2f} hold of {hold.run_key} "
            f"(flow run {hold.flow_run_id}); billed ${hold.actual_usd or 0:.2f}; recorded as "
            f"{hold.closed_by}: {hold.note}"
        )
