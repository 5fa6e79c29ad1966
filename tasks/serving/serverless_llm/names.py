"""Strict patterns for everything that reaches git, the GitHub API or a subprocess.

A model name becomes a dict key in `config/models.py`, a `yq` path and a workflow input,
an env var (`NAME_API_URL`) and a subdomain in serverless-llm, so it is the narrowest:
lowercase letters and digits, starting with a letter.
"""

from __future__ import annotations

import re

from blocks.serverless_llm import BRANCH_PATTERN, REPOSITORY_PATTERN
from schemas.serving import MODEL_NAME_PATTERN

HF_REPO_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
HF_FILE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}\.gguf$")
WORKFLOW_FILE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.ya?ml$")


def check_model_name(name: str) -> str:
    """Return `name` if serverless-llm can use it as a model key; raise a ValueError that says why not."""
    if not isinstance(name, str) or not MODEL_NAME_PATTERN.match(name):
        suggestion = re.sub(r"[^a-z0-9]", "", str(name).lower()).lstrip("0123456789")[:40]
        hint = f" (for example {suggestion!r})" if len(suggestion) >= 2 else ""
        raise ValueError(
            f"model name {name!r} is not accepted: serverless-llm uses it as a config key, workflow input, "
            f"env var and subdomain, so it must be 2-40 lowercase letters/digits starting with a letter{hint}"
        )
    return name


def check_branch_name(branch: str) -> str:
    if not BRANCH_PATTERN.match(branch) or branch.startswith("-"):
        raise ValueError(
            f"branch {branch!r} is not a plain git branch name (letters, digits, '.', '_', '/', '-')"
        )
    return branch


def check_repository(repository: str) -> str:
    if not REPOSITORY_PATTERN.match(repository):
        raise ValueError(f"repository {repository!r} must look like 'owner/name'")
    return repository


def check_hf_location(hf_repo: str, hf_file: str) -> None:
    if not HF_REPO_PATTERN.match(hf_repo) or ".." in hf_repo:
        raise ValueError(
            f"hf_repo {hf_repo!r} must be a Hugging Face repo id like 'user/name-GGUF'"
        )
    if not HF_FILE_PATTERN.match(hf_file) or ".." in hf_file:
        raise ValueError(f"hf_file {hf_file!r} must be a relative path ending in .gguf")


def check_workflow_file(workflow: str) -> str:
    if not WORKFLOW_FILE_PATTERN.match(workflow):
        raise ValueError(
            f"workflow {workflow!r} must be a workflow file name such as 'inference.yml'"
        )
    return workflow


def deploy_branch(name: str) -> str:
    """The branch a pull-request deployment of `name` is pushed to."""
    return check_branch_name(f"lmft/deploy-{check_model_name(name)}")
