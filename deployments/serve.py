"""Serve the pipeline's flows as deployments from this machine, without a work pool.

    python -m deployments.serve            # every flow, at most 4 runs executing at once
    python -m deployments.serve --limit 2  # at most two runs at once

This is the laptop setup: `lmft mcp` and the Prefect UI start runs of these deployments and
this process executes them. A server with workers uses `prefect deploy --all` instead.

Each deployment keeps the concurrency limit `prefect.yaml` gives it (two `finetune` runs at a
time, the rest queue), and the process executes at most `--limit` runs at once, so no client
can start unlimited trainings here. Runs send heartbeats, and the run-safety automations
(`deployments.run_safety`) crash a run whose process vanished and settle what it left.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, cast

import yaml
from prefect import Flow, serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.deployments.runner import RunnerDeployment

from deployments.run_safety import enable_heartbeats, ensure_run_safety_automations
from flows.convert import convert
from flows.cost_report import cost_report
from flows.deploy import deploy
from flows.estimate import estimate
from flows.finetune import finetune
from flows.health_check import health_check
from flows.merge_watch import merge_watch
from flows.models import models
from flows.retrain import retrain
from flows.settle_ended_runs import settle_ended_runs
from flows.spend_alerts import spend_alerts
from flows.validate import validate
from schemas.flows import DeploymentName

SERVED_FLOWS: dict[DeploymentName, Flow[..., Any]] = {
    DeploymentName.FINETUNE: finetune,
    DeploymentName.VALIDATE: validate,
    DeploymentName.ESTIMATE: estimate,
    DeploymentName.CONVERT: convert,
    DeploymentName.DEPLOY: deploy,
    DeploymentName.RETRAIN: retrain,
    DeploymentName.COST_REPORT: cost_report,
    DeploymentName.SPEND_ALERTS: spend_alerts,
    DeploymentName.HEALTH_CHECK: health_check,
    DeploymentName.SETTLE_ENDED_RUNS: settle_ended_runs,
    DeploymentName.MERGE_WATCH: merge_watch,
    DeploymentName.MODELS: models,
}
"""Every deployment of `prefect.yaml` (tests/deployments check both against `DeploymentName`)."""
DEFAULT_LIMIT = 4
PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"


def concurrency_limits(path: Path = PREFECT_YAML) -> dict[str, ConcurrencyLimitConfig]:
    """Each deployment's `concurrency_limit` in `prefect.yaml`, by deployment name."""
    config = yaml.safe_load(path.read_text())
    limits = {}
    for deployment in config.get("deployments") or []:
        limit = deployment.get("concurrency_limit")
        if isinstance(limit, int):
            limits[deployment["name"]] = ConcurrencyLimitConfig(limit=limit)
        elif isinstance(limit, dict):
            limits[deployment["name"]] = ConcurrencyLimitConfig.model_validate(limit)
    return limits


def served_deployments() -> list[RunnerDeployment]:
    """Every pipeline flow as a deployment, with its `prefect.yaml` concurrency limit."""
    limits = concurrency_limits()
    return [
        # to_deployment is typed "deployment or coroutine" (async_dispatch); sync code gets it.
        cast(
            RunnerDeployment,
            flow.to_deployment(
                name=name.deployment_name, concurrency_limit=limits.get(name.deployment_name)
            ),
        )
        for name, flow in SERVED_FLOWS.items()
    ]


def serve_flows(*extra: RunnerDeployment, limit: int | None = DEFAULT_LIMIT) -> None:
    """Register every pipeline flow (and `extra`) as deployments; execute their runs until interrupted."""
    enable_heartbeats()
    deployments = served_deployments()
    for deployment in deployments:  # registered first: the settle automation names its id
        deployment.apply()
    ensure_run_safety_automations()
    serve(*deployments, *extra, limit=limit, print_starting_message=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help="Most runs executing at once."
    )
    serve_flows(limit=parser.parse_args().limit)
