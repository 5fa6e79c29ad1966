"""`deploy_gguf`: put a GGUF in front of users (locally, or on serverless-llm) and prove it answers."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from blocks import load_block
from blocks.serverless_llm import DeployMode, ServerlessLLMTarget
from schemas.serving import LOCAL_TARGET, ServedModel, ServeStatus
from tasks.paths import lmft_home
from tasks.serving.endpoints import smoke_chat
from tasks.serving.local import local_name_for, start_local_server

DEPLOY_TIMEOUT_SECONDS = 3 * 3600
"""A deploy uploads the GGUF (several GB), pushes to GitHub and waits for the model to answer."""


def deployments_dir() -> Path:
    path = lmft_home() / "deployments"
    path.mkdir(parents=True, exist_ok=True)
    return path


def record_deployment(deployment: ServedModel) -> ServedModel:
    """Keep the deployment on disk (`$LMFT_HOME/deployments/NAME.json`) and as Prefect artifacts.

    Failed and rolled-back deploys are recorded too, with their reason.
    """
    (deployments_dir() / f"{deployment.name}.json").write_text(deployment.model_dump_json(indent=2))
    rows = [
        (k, v)
        for k, v in deployment.model_dump(mode="json", exclude={"smoke", "reason"}).items()
        if v is not None
    ]
    table = "\n".join(f"| {k} | `{v}` |" for k, v in rows)
    smoke = ""
    if deployment.smoke:
        smoke = f"\n## Smoke request\n**prompt:** {deployment.smoke.prompt}\n\n**reply:** {deployment.smoke.reply}\n"
    reason = ""
    if deployment.reason:
        reason = f"**{deployment.status.value}:** {deployment.reason}\n\n"
    create_markdown_artifact(
        f"# Deployment: {deployment.name}\n\n{reason}| | |\n|---|---|\n{table}\n{smoke}",
        key="deployment-" + re.sub(r"[^a-z0-9-]", "-", deployment.name),
        description=f"Deployment of {deployment.name}",
    )
    links = (
        deployment.pull_request_url,
        deployment.build_run_url,
        deployment.inference_run_url,
        deployment.url,
        deployment.rolled_back_by,
    )
    for link in links:
        if link and link.startswith(("http://", "https://")):
            create_link_artifact(link, description=f"{deployment.name}: {link}")
    return deployment


def list_deployment_records() -> list[ServedModel]:
    """Every recorded deploy (`$LMFT_HOME/deployments/*.json`), the latest attempt per name."""
    records = [
        ServedModel.model_validate_json(path.read_text())
        for path in sorted(deployments_dir().glob("*.json"))
    ]
    return sorted(records, key=lambda record: record.deployed_at)


def resolve_target(target: str | ServerlessLLMTarget) -> ServerlessLLMTarget | None:
    """None for the local target; otherwise the ServerlessLLMTarget (loading a saved block by name)."""
    if isinstance(target, ServerlessLLMTarget):
        return target
    if target == LOCAL_TARGET:
        return None
    try:
        return load_block(ServerlessLLMTarget, target)
    except ValueError:
        raise ValueError(
            f"target {target!r} is neither 'local' nor a saved ServerlessLLMTarget block; "
            "create one (see docs/deploy.md) or use --target local"
        ) from None


def serve_locally(
    gguf_path: str, name: str, *, port: int | None = None, n_ctx: int = 2048
) -> ServedModel:
    """Start (or reuse) the local server for `name`, send the smoke request, return the deployment."""
    server = start_local_server(gguf_path, name, port=port, n_ctx=n_ctx)
    smoke = smoke_chat(server.url, model=name)
    return ServedModel(
        target=LOCAL_TARGET,
        name=name,
        status=ServeStatus.SERVING,
        gguf_path=server.gguf_path,
        url=server.url,
        smoke=smoke,
        pid=server.pid,
        port=server.port,
    )


@task(name="deploy-gguf", timeout_seconds=DEPLOY_TIMEOUT_SECONDS)
def deploy_gguf(
    gguf_path: str,
    name: str,
    target: str | ServerlessLLMTarget = LOCAL_TARGET,
    *,
    quality_report_md: str | None = None,
    lineage: dict | None = None,
    hf_repo: str | None = None,
    description: str | None = None,
    stop_at_pull_request: bool = False,
    merged_commit: str | None = None,
) -> ServedModel:
    """Deploy a GGUF (a local file, or hf://owner/repo/file.gguf) to `target` and smoke-test it.

    `stop_at_pull_request` and `merged_commit`: see `deploy_model`, which waits for the merge.
    """
    resolved = resolve_target(target)
    if resolved is None:
        deployment = serve_locally(gguf_path, local_name_for(name))
    else:
        from tasks.serving.serverless_llm.deploy import DeploymentFailed, deploy_to_serverless_llm

        try:
            deployment = deploy_to_serverless_llm(
                gguf_path,
                name,
                resolved,
                target_name=target if isinstance(target, str) else resolved.repository,
                quality_report_md=quality_report_md,
                lineage=lineage,
                hf_repo=hf_repo,
                description=description,
                stop_at_pull_request=stop_at_pull_request,
                merged_commit=merged_commit,
            )
        except DeploymentFailed as exc:
            record_deployment(exc.record)  # rolled back or failed: keep the reason, PR and run
            raise
    return record_deployment(deployment)


def deploy_model(
    gguf_path: str,
    name: str,
    target: str | ServerlessLLMTarget = LOCAL_TARGET,
    *,
    quality_report_md: str | None = None,
    lineage: dict | None = None,
    hf_repo: str | None = None,
) -> ServedModel:
    """In a flow body: `deploy_gguf`, waiting for the pull request's merge where the target asks.

    A saved serverless-llm target with `wait_for_merge` opens its pull request, then the flow
    waits for the merge (`await_merge`: suspended, holding no worker, in a run of a deployment),
    then deploys again from the merged base branch: build, dispatch, smoke test, roll back.
    """
    from tasks.serving.serverless_llm.github import await_merge

    resolved = resolve_target(target)
    waits = (
        isinstance(target, str)  # the watcher that resumes the run loads the block by name
        and resolved is not None
        and resolved.mode is DeployMode.PULL_REQUEST
        and resolved.wait_for_merge
    )
    deploy_this = partial(
        deploy_gguf,
        gguf_path,
        name,
        target,
        quality_report_md=quality_report_md,
        lineage=lineage,
        hf_repo=hf_repo,
    )
    deployment = deploy_this(stop_at_pull_request=waits)
    if not waits or deployment.status is not ServeStatus.AWAITING_MERGE:
        return deployment
    assert resolved is not None and isinstance(target, str) and deployment.pull_request_url
    merged = await_merge(target, resolved, deployment.pull_request_url)
    served = deploy_this(merged_commit=merged)
    return served.model_copy(
        update={"pull_request_url": deployment.pull_request_url, "branch": deployment.branch}
    )
