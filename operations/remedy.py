"""The health check the GitHub Actions cron runs: needs no worker, only the Prefect API.

    python -m operations.remedy --pool github-actions --dispatch prefect-worker.yml

Prints the `HealthReport` as JSON. When the API is up but no worker is online for the
pool, dispatches the worker workflow (GITHUB_TOKEN with `actions: write`; the repository
and ref come from the Actions environment). Exits 1 when unhealthy, unless it has just
started a worker (the next check verifies it).
"""

from __future__ import annotations

import argparse
import os
import sys

from pydantic import SecretStr

from operations.github_workflows import WorkflowDispatchFailed, WorkflowTarget
from operations.health import HealthReport, check_prefect_health, start_worker_if_missing


class HealthCheckError(RuntimeError):
    """The check could not run its remedy; the message says what to set."""


def check_and_remedy(
    pool: str, *, dispatch: str | None = None, inputs: dict[str, str] | None = None
) -> HealthReport:
    """Check the service; dispatch the `dispatch` workflow when no worker serves `pool`."""
    report = check_prefect_health(pool)
    if dispatch is None or report.healthy:
        return report
    token = os.environ.get("GITHUB_TOKEN")
    if not token:
        raise HealthCheckError("--dispatch needs GITHUB_TOKEN (a token that may write actions)")
    try:
        target = WorkflowTarget.from_actions_env(workflow=dispatch, inputs=inputs)
        return start_worker_if_missing(report, target, token=SecretStr(token))
    except (ValueError, WorkflowDispatchFailed) as exc:
        raise HealthCheckError(str(exc)) from None


def exit_code(report: HealthReport) -> int:
    return 0 if report.healthy or report.worker_dispatched else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m operations.remedy", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--pool", default="github-actions")
    parser.add_argument(
        "--dispatch", metavar="WORKFLOW", help="Workflow file to dispatch when no worker is online."
    )
    parser.add_argument("--dispatch-input", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        inputs = dict(item.split("=", 1) for item in args.dispatch_input)
        report = check_and_remedy(args.pool, dispatch=args.dispatch, inputs=inputs)
    except (HealthCheckError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.model_dump_json(indent=2))
    for problem in report.problems:
        print(f"unhealthy: {problem}", file=sys.stderr)
    if report.worker_dispatched:
        print(f"dispatched {args.dispatch} to start a worker for pool {args.pool!r}")
    return exit_code(report)


if __name__ == "__main__":
    sys.exit(main())
