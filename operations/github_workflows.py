"""Start a GitHub Actions workflow run (`workflow_dispatch`) through GitHub's REST API.

Used by the worker keep-alive (a worker dispatches its successor before its runner dies)
and by the health check (no worker online: start one).
"""

from __future__ import annotations

import os
import re
from typing import Annotated

from pydantic import BaseModel, Field, SecretStr, field_validator

GITHUB_API_URL = "https://api.github.com"
_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


class WorkflowTarget(BaseModel):
    """Which workflow to dispatch, on which ref, with which inputs."""

    repository: Annotated[
        str, Field(description="owner/name of the repository.", examples=["acme/lm-fine-tuning"])
    ]
    workflow: Annotated[str, Field(min_length=1, description="Workflow file name or id.")] = (
        "prefect-worker.yml"
    )
    ref: Annotated[str, Field(min_length=1, description="Branch or tag the run uses.")] = "main"
    inputs: dict[str, str] = {}
    api_url: Annotated[
        str, Field(description="GitHub REST API root (GitHub Enterprise: https://HOST/api/v3).")
    ] = GITHUB_API_URL

    @field_validator("repository")
    @classmethod
    def _check_repository(cls, value: str) -> str:
        if not _REPOSITORY.match(value):
            raise ValueError(f"repository: {value!r} is not 'owner/name'")
        return value

    @classmethod
    def from_actions_env(
        cls, *, workflow: str, inputs: dict[str, str] | None = None
    ) -> WorkflowTarget:
        """The target in this repository and ref, read from a GitHub Actions job's environment."""
        missing = [
            name for name in ("GITHUB_REPOSITORY", "GITHUB_REF_NAME") if not os.environ.get(name)
        ]
        if missing:
            raise ValueError(
                f"{', '.join(missing)} not set: run inside GitHub Actions, or set GITHUB_REPOSITORY (owner/name) and GITHUB_REF_NAME (branch)"
            )
        return cls(
            repository=os.environ["GITHUB_REPOSITORY"],
            workflow=workflow,
            ref=os.environ["GITHUB_REF_NAME"],
            inputs=inputs or {},
            api_url=os.environ.get("GITHUB_API_URL", GITHUB_API_URL),
        )


class WorkflowDispatchFailed(RuntimeError):
    """GitHub refused to start the workflow run; the message says why and what to check."""


def dispatch_workflow(target: WorkflowTarget, *, token: SecretStr) -> None:
    """Ask GitHub to start `target.workflow` on `target.ref` (needs a token with `actions: write`)."""
    from github import Auth, Github, GithubException

    client = Github(
        base_url=target.api_url, auth=Auth.Token(token.get_secret_value()), lazy=True, retry=3
    )
    workflow = client.get_repo(target.repository).get_workflow(target.workflow)
    try:
        workflow.create_dispatch(target.ref, target.inputs, throw=True)
    except GithubException as exc:
        message = exc.data.get("message") if isinstance(exc.data, dict) else None
        raise WorkflowDispatchFailed(
            f"GitHub refused to dispatch {target.workflow} on {target.repository}@{target.ref} "
            f"(HTTP {exc.status}: {message or 'no message'}); check the workflow has a workflow_dispatch "
            "trigger with these inputs and the token may write actions"
        ) from None
    finally:
        client.close()
