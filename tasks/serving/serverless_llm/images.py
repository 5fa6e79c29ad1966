"""Which image serves a deployed model, and when serverless-llm builds images.

How the real repository runs a model (`.github/actions/inference/action.yml`): it reads
`python config/models.py NAME`, pulls `ghcr.io/OWNER/lm-arena/${model_dir}:latest` where
`model_dir` is the entry's `inference_dir`, and starts it with `MODEL_REPO`/`MODEL_FILE`.
Images come from one place only, the Build workflow (`build-push-images.yml`): it runs on
**pushes to `main` that touch its `on.push.paths`** (`config/**`, `app/shared/**`, ...) and
builds one image per directory listed by `config/models.py --inference-dirs`, with the
recipe (`dockerfile`) of the model named like the directory without `-inference`.

So a deployment never asks for a new image: a GGUF is served by the generic llama-server
image (`dockerfile="llama-server"`, which downloads the weights at start-up), and the entry
reuses the `inference_dir` of a model that the repository already builds that way, as the
maintainers' own fine-tunes do. That image exists on `main` already, which is what lets the
inference workflow run from an unmerged pull-request branch.
"""

from __future__ import annotations

import fnmatch
from collections import Counter

import yaml

from tasks.serving.serverless_llm.git_repo import GitClone, GitError
from tasks.serving.serverless_llm.models_file import ModelsFileError

LLAMA_SERVER = "llama-server"
DEFAULT_RECIPE = "inference"  # ModelConfig.dockerfile's default in serverless-llm
INFERENCE_DIR_SUFFIX = "-inference"


class NoServingImage(ModelsFileError):
    """The repository builds no image that can serve the GGUF; nothing was changed."""


def built_images(entries: dict[str, dict[str, object]]) -> dict[str, str]:
    """inference_dir -> the recipe the Build workflow builds it with, for every directory in use."""
    images: dict[str, str] = {}
    for values in entries.values():
        directory = values.get("inference_dir")
        if isinstance(directory, str) and directory:
            owner = entries.get(directory.removesuffix(INFERENCE_DIR_SUFFIX), {})
            images[directory] = str(owner.get("dockerfile", DEFAULT_RECIPE))
    return images


def choose_inference_dir(
    entries: dict[str, dict[str, object]], name: str, override: str | None = None
) -> tuple[str, str]:
    """(inference_dir, dockerfile) for entry `name`: an image the repository already builds.

    Order: the target's `override`; the entry's own directory on a re-deploy; otherwise the
    llama-server directory most entries share (first in the file on a tie).

    Raises:
        NoServingImage: the override is not built by the repository, or no llama-server image exists.
    """
    images = built_images(entries)
    if override is not None:
        if override not in images:
            raise NoServingImage(
                f"inference_dir {override!r} (set on the ServerlessLLMTarget block) is not an image the "
                f"repository builds: its Build workflow builds {', '.join(sorted(images)) or 'nothing'}. "
                "Pick one of those or clear inference_dir"
            )
        return override, images[override]
    current = entries.get(name, {}).get("inference_dir")
    if isinstance(current, str) and images.get(current) == LLAMA_SERVER:
        return current, LLAMA_SERVER
    uses = Counter(
        values.get("inference_dir")
        for values in entries.values()
        if images.get(values.get("inference_dir")) == LLAMA_SERVER  # type: ignore[arg-type]
    )
    if not uses:
        raise NoServingImage(
            "the repository builds no generic llama-server image (no model in config/models.py has "
            'dockerfile="llama-server" and its own inference_dir), so nothing could start this GGUF. '
            "Add such a model on the base branch and let its Build run, or set inference_dir on the "
            "ServerlessLLMTarget block to an image the repository builds. Nothing was pushed"
        )
    best = max(uses.values())
    return next(d for d in uses if uses[d] == best), LLAMA_SERVER  # type: ignore[return-value]


def starts_build(
    clone: GitClone, workflow: str | None, *, branch: str, base: str, head: str
) -> bool:
    """Whether pushing `base..head` to `branch` starts `workflow` (its `on.push` filters).

    GitHub matches `paths` with its own glob syntax (`*` stops at `/`, `**` does not),
    which is what git's `:(glob)` pathspec magic implements; git answers the question
    directly on the commits, so no glob matcher is written here.
    """
    if workflow is None:
        return False
    try:
        text = clone.run("show", f"{head}:.github/workflows/{workflow}")
    except GitError:
        return False  # the repository has no such workflow: nothing is built on push
    data = yaml.safe_load(text) or {}
    triggers = data.get("on", data.get(True))  # YAML 1.1 reads a bare `on:` key as True
    if isinstance(triggers, str):
        triggers = {triggers: None}
    elif isinstance(triggers, list):
        triggers = dict.fromkeys(triggers)
    if not isinstance(triggers, dict) or "push" not in triggers:
        return False
    push = triggers["push"] or {}
    # Branch filters use the same glob syntax; a branch name has no '/' to stop at in practice.
    if "branches" in push and not any(fnmatch.fnmatchcase(branch, p) for p in push["branches"]):
        return False
    if any(fnmatch.fnmatchcase(branch, p) for p in push.get("branches-ignore") or []):
        return False
    specs = [
        f":(exclude,glob){p[1:]}" if p.startswith("!") else f":(glob){p}"
        for p in push.get("paths") or ["**"]
    ]
    specs += [f":(exclude,glob){p}" for p in push.get("paths-ignore") or []]
    return bool(clone.run("diff", "--name-only", base, head, "--", *specs))
