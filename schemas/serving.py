"""A served model: where a GGUF was deployed, and the evidence that it answers."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import Enum
from typing import Annotated

from pydantic import BaseModel, Field

MODEL_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]{1,39}$")
"""serverless-llm model names: 2-40 lowercase letters and digits, starting with a letter."""

LOCAL_TARGET = "local"
"""The deploy target that serves on this machine (llama-cpp-python's server)."""

# The `deploy` flow's parameters; the MCP tool `deploy_model` takes the same types.
GGUFLocation = Annotated[
    str,
    Field(
        min_length=1,
        description="A .gguf file on the worker, or hf://owner/repo/file.gguf already on the Hub.",
        examples=["hf://me/smollm2-pirate-GGUF/smollm2-pirate.Q8_0.gguf"],
    ),
]
ServedName = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
        description="Model name users ask for: 1-64 lowercase letters, digits, '.', '_' or '-' "
        "(serverless-llm: 2-40 lowercase letters and digits, starting with a letter).",
        examples=["smollm2pirate"],
    ),
]
DeployTarget = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        description="'local' (llama-cpp-python's server on the worker) or the name of a saved "
        "ServerlessLLMTarget block.",
    ),
]


class SmokeResult(BaseModel):
    """The smoke chat request and what the model answered."""

    url: str
    model: str | None
    prompt: str
    reply: str
    completion_tokens: int | None = None


class ServeStatus(str, Enum):
    """Where a deploy stands."""

    SERVING = "serving"  # healthy and answered the smoke request
    AWAITING_MERGE = "awaiting_merge"  # PR open; nothing runs until a maintainer merges it
    DISPATCHED = "dispatched"  # inference workflow started; no health URL to check
    UNCHANGED = "unchanged"  # the repository already held this entry: nothing committed or pushed
    ROLLED_BACK = "rolled_back"  # did not serve; this deploy's change was undone (see reason)
    FAILED = "failed"  # did not serve and nothing was (or could be) rolled back (see reason)


class ServedModel(BaseModel):
    """Where a GGUF was deployed and the evidence that it serves."""

    target: str = Field(description="'local' or the name of a ServerlessLLMTarget block.")
    name: str
    status: ServeStatus
    gguf_path: str
    url: str | None = Field(default=None, description="Base URL of the OpenAI-compatible server.")
    smoke: SmokeResult | None = None
    pid: int | None = None
    port: int | None = None
    repository: str | None = None
    branch: str | None = None
    commit_sha: str | None = None
    pull_request_url: str | None = None
    build_run_url: str | None = None
    inference_run_url: str | None = None
    hf_repo: str | None = None
    hf_file: str | None = None
    inference_dir: str | None = Field(
        default=None, description="serverless-llm image directory the entry runs in."
    )
    models_entry_changed: bool | None = None
    reason: str | None = Field(
        default=None, description="Why a failed or rolled-back deploy did not serve."
    )
    rolled_back_by: str | None = Field(
        default=None, description="Commit, closed pull request or rollback pull request."
    )
    deployed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
