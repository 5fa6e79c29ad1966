"""The `deploy` flow: an existing GGUF → a server that answers (local, or serverless-llm).

With `rollback`, it redeploys the registered model that the one serving under `name` on
`target` replaced, through the same deploy and checks; the registry records every deploy.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from schemas.serving import LOCAL_TARGET, DeployTarget, GGUFLocation, ServedModel, ServedName
from schemas.status import Stage
from tasks.registry import find_rollback, record_served
from tasks.reporting.status import STATUS_HOOKS, publish_served, publish_stage
from tasks.serving.deploy import deploy_model


# Persisted results: a run waiting for its pull request's merge is suspended, and resumed it
# runs again from the start, reading what it already did (see tasks.serving.deploy.deploy_model).
@flow(name="deploy", log_prints=True, persist_result=True, **STATUS_HOOKS)  # type: ignore[call-overload]  # hooks given as a dict
def deploy(
    gguf_path: GGUFLocation | None,
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
    rollback: Annotated[
        bool,
        Field(
            description="Redeploy the registered model that the one serving under `name` on "
            "`target` replaced (gguf_path: null)."
        ),
    ] = False,
) -> ServedModel:
    """Deploy `gguf_path` as model `name` on `target` and check that it answers a chat request."""
    publish_stage(Stage.DEPLOYING)
    model_id = None
    if rollback:
        previous = find_rollback(target, name)
        model_id, gguf_path = previous.id, previous.file_to_deploy(target)
        lineage = lineage or previous.lineage()
    elif gguf_path is None:
        raise ValueError(
            "gguf_path: give the GGUF to deploy, or set rollback to redeploy the previous model"
        )
    assert gguf_path is not None
    deployment = deploy_model(
        gguf_path,
        name,
        target,
        quality_report_md=quality_report_md,
        lineage=lineage,
        hf_repo=hf_repo,
    )
    record_served(deployment, model_id, rollback=rollback)
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
