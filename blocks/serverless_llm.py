"""`ServerlessLLMTarget`: where and how a GGUF is deployed to a serverless-llm repository.

Save one per repository, then pass its name to `lmft deploy --target NAME`:

    from blocks.serverless_llm import ServerlessLLMTarget
    from prefect_github import GitHubCredentials

    ServerlessLLMTarget(
        repository="jonasneves/serverless-llm",
        credentials=GitHubCredentials(token="ghp_..."),
        health_url_pattern="https://{name}.example.org/health",
        hf_namespace="my-hf-user",
    ).save("serverless-llm")
"""

from __future__ import annotations

import re
from enum import Enum

from prefect.blocks.core import Block
from prefect_github import GitHubCredentials
from pydantic import Field, field_validator

REPOSITORY_PATTERN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
BRANCH_PATTERN = re.compile(r"^(?!/)(?!.*//)(?!.*\.\.)(?!.*@\{)[A-Za-z0-9._/-]{1,100}(?<![/.])$")


class DeployMode(str, Enum):
    """How the change to `config/models.py` reaches the base branch."""

    PULL_REQUEST = "pull_request"
    PUSH = "push"


class ServerlessLLMTarget(Block):
    """A serverless-llm repository to deploy GGUF models to, and the server settings to use."""

    _block_type_name = "serverless-llm Target"
    _block_type_slug = "serverless-llm-target"
    _description = (
        "A serverless-llm repository (GitHub) that serves GGUF models from Actions runners."
    )

    repository: str = Field(
        description="owner/name of the serverless-llm repository on GitHub.",
        examples=["jonasneves/serverless-llm"],
    )
    base_branch: str = Field(
        default="main", description="Branch the inference and Build workflows run from."
    )
    credentials: GitHubCredentials | None = Field(
        default=None,
        description="GitHub token with contents, pull-requests and actions write access.",
    )
    api_base_url: str = Field(
        default="https://api.github.com",
        description="GitHub REST API root (GitHub Enterprise: https://HOST/api/v3).",
    )
    clone_url: str | None = Field(
        default=None,
        description="Clone URL override; default https://github.com/{repository}.git. Never put a token in it.",
    )
    health_url_pattern: str | None = Field(
        default=None,
        description="URL of a model server's /health, with {name}, {port} or {subdomain} placeholders; "
        "without it the flow stops after the inference workflow is dispatched.",
        examples=["https://{name}.example.org/health"],
    )
    mode: DeployMode = Field(
        default=DeployMode.PULL_REQUEST,
        description="Open a pull request, or push to the base branch.",
    )
    wait_for_merge: bool = Field(
        default=False,
        description="In pull_request mode, wait for someone to merge the PR, then continue to serving.",
    )
    merge_timeout_seconds: float = Field(default=24 * 3600, gt=0)
    build_workflow: str | None = Field(
        default="build-push-images.yml",
        description="Workflow that builds the images. It runs only on pushes to the base branch matching "
        "its on.push paths; after such a push (push mode, or a merge with wait_for_merge) the flow "
        "waits for its run. None to never wait.",
    )
    inference_dir: str | None = Field(
        default=None,
        description="Image directory (config/models.py inference_dir) the entry runs in; it must be one "
        "the repository builds. Default: the generic llama-server image its models share.",
        examples=["lfm2mini-inference"],
    )
    build_timeout_seconds: float = Field(default=3600, gt=0)
    inference_workflow: str = Field(
        default="inference.yml", description="Workflow dispatched with model=NAME."
    )
    health_timeout_seconds: float = Field(
        default=900, gt=0, description="The server downloads the GGUF at start-up."
    )
    poll_seconds: float = Field(
        default=15, gt=0, description="Interval between checks of the PR, workflow runs and health."
    )
    hf_namespace: str | None = Field(
        default=None,
        description="Hugging Face user/org the GGUF is uploaded to when it is a local file ({namespace}/{name}-GGUF).",
    )
    category: str = Field(
        default="SMALL",
        description="ModelCategory member of the new entry.",
        examples=["SMALL", "MEDIUM", "REASONING"],
    )
    routing_category: str | None = Field(
        default="general", description="general | coding | reasoning | function_calling"
    )
    n_ctx: int = Field(default=4096, ge=256, le=262144)
    n_threads: int = Field(default=4, ge=1, le=64)
    n_batch: int | None = Field(default=None, ge=1, le=8192)
    max_concurrent: int | None = Field(default=None, ge=1, le=64)
    owned_by: str = Field(default="lm-fine-tuning")

    @field_validator("repository")
    @classmethod
    def _check_repository(cls, value: str) -> str:
        if not REPOSITORY_PATTERN.match(value):
            raise ValueError(
                f"repository {value!r} must look like 'owner/name' (letters, digits, '.', '_', '-')"
            )
        return value

    @field_validator("base_branch")
    @classmethod
    def _check_branch(cls, value: str) -> str:
        if not BRANCH_PATTERN.match(value):
            raise ValueError(f"base_branch {value!r} is not a plain branch name")
        return value

    @field_validator("inference_workflow", "build_workflow")
    @classmethod
    def _check_workflow(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.ya?ml", value):
            raise ValueError(
                f"workflow {value!r} must be a workflow file name such as 'inference.yml'"
            )
        return value

    @field_validator("inference_dir")
    @classmethod
    def _check_inference_dir(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,99}", value):
            raise ValueError(
                f"inference_dir {value!r} must be an image directory name such as 'lfm2mini-inference'"
            )
        return value

    @field_validator("health_url_pattern")
    @classmethod
    def _check_health_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            url = value.format(name="model", port=8100, subdomain="model")
        except (KeyError, IndexError, ValueError):
            raise ValueError(
                f"health_url_pattern {value!r} may only use the placeholders {{name}}, {{port}}, {{subdomain}}"
            ) from None
        if not url.startswith(("http://", "https://")) or not url.rstrip("/").endswith("/health"):
            raise ValueError(
                f"health_url_pattern {value!r} must be an http(s) URL ending in /health"
            )
        return value

    @field_validator("category")
    @classmethod
    def _check_category(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Z][A-Z0-9_]{0,31}", value):
            raise ValueError(
                f"category {value!r} must be a ModelCategory member name such as SMALL"
            )
        return value

    @field_validator("routing_category")
    @classmethod
    def _check_routing(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", value):
            raise ValueError(
                f"routing_category {value!r} must be lowercase letters, digits and '_'"
            )
        return value

    def token(self) -> str | None:
        """The GitHub token (never log it)."""
        if self.credentials is None or self.credentials.token is None:
            return None
        return self.credentials.token.get_secret_value()

    def resolved_clone_url(self) -> str:
        return self.clone_url or f"https://github.com/{self.repository}.git"
