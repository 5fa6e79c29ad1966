"""The `deploy` flow: an existing GGUF → a server that answers (local, or serverless-llm)."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from schemas.serving import LOCAL_TARGET, DeployTarget, GGUFLocation, ServedModel, ServedName
from schemas.status import Stage
from tasks.reporting.status import STATUS_HOOKS, publish_served, publish_stage
from tasks.serving.deploy import deploy_gguf


@flow(name="deploy", log_prints=True, **STATUS_HOOKS)
def deploy(
    gguf_path: GGUFLocation,
    name: ServedName,
    target: DeployTarget = LOCAL_TARGET,
    quality_report_md: Annotated[
        str | None, Field(description="Markdown quality report for the pull request.")
    ] = None,
    lineage: Annotated[
        dict | None, Field(description="Base model, dataset, job, ... for the pull request.")
    ] = None,
    hf_repo: Annotated[
        str | None, Field(description="Hub repo to upload a local GGUF to (serverless-llm).")
    ] = None,
) -> ServedModel:
    """Deploy `gguf_path` as model `name` on `target` and check that it answers a chat request."""
    publish_stage(Stage.DEPLOYING)
    deployment = deploy_gguf(
        gguf_path,
        name,
        target,
        quality_report_md=quality_report_md,
        lineage=lineage,
        hf_repo=hf_repo,
    )
    publish_served(deployment)
    print(
        f"{deployment.name} is {deployment.status.value} at {deployment.url or deployment.pull_request_url}"
    )
    return deployment


if __name__ == "__main__":
    import sys

    from tasks.jobs.base_model import embedded_gguf_path

    deploy(
        sys.argv[1] if len(sys.argv) > 1 else str(embedded_gguf_path()),
        sys.argv[2] if len(sys.argv) > 2 else "smollm2",
    )
