"""Serve the pipeline's flows as deployments from this machine, without a work pool.

    python -m deployments.serve            # every flow, runs execute as local subprocesses
    python -m deployments.serve --limit 2  # at most two runs at once

This is the laptop setup: `lmft mcp` and the Prefect UI start runs of these deployments and
this process executes them. A server with workers uses `prefect deploy --all` instead.
"""

from __future__ import annotations

import argparse
from typing import Any, cast

from prefect import Flow, serve
from prefect.deployments.runner import RunnerDeployment

from flows.cost_report import cost_report
from flows.deploy import deploy
from flows.estimate import estimate
from flows.finetune import finetune
from flows.validate import validate
from schemas.flows import DeploymentName

SERVED_FLOWS: dict[DeploymentName, Flow[..., Any]] = {
    DeploymentName.FINETUNE: finetune,
    DeploymentName.VALIDATE: validate,
    DeploymentName.ESTIMATE: estimate,
    DeploymentName.DEPLOY: deploy,
    DeploymentName.COST_REPORT: cost_report,
}


def serve_flows(*extra: RunnerDeployment, limit: int | None = None) -> None:
    """Register every pipeline flow (and `extra`) as deployments; execute their runs until interrupted."""
    deployments = [
        # to_deployment is typed "deployment or coroutine" (async_dispatch); sync code gets the deployment.
        cast(RunnerDeployment, flow.to_deployment(name=name.deployment_name))
        for name, flow in SERVED_FLOWS.items()
    ]
    serve(*deployments, *extra, limit=limit, print_starting_message=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=None, help="Most runs executing at once.")
    serve_flows(limit=parser.parse_args().limit)
