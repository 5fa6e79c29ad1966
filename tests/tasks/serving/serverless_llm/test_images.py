"""Which image an entry runs in, and whether a push starts the repository's Build."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.serving.serverless_llm.git_repo import GitClone
from tasks.serving.serverless_llm.images import NoServingImage, choose_inference_dir, starts_build
from tasks.serving.serverless_llm.models_file import read_entries
from tests.doubles.serverless_llm_repo import MODELS_PY, commit_all, make_serverless_repo


def test_the_llama_server_image_most_models_share_is_reused():
    entries = read_entries(MODELS_PY)
    assert choose_inference_dir(entries, "pirate") == ("tinychat-inference", "llama-server")
    # A re-deploy keeps the directory the entry already has, when it is a llama-server image.
    entries["pirate"] = {"inference_dir": "thinker-inference"}
    assert choose_inference_dir(entries, "pirate") == ("thinker-inference", "llama-server")
    # The python image of 'coder' is built, so it may be chosen explicitly.
    assert choose_inference_dir(entries, "pirate", "coder-inference") == (
        "coder-inference",
        "inference",
    )


def test_no_llama_server_image_is_refused():
    entries = read_entries(MODELS_PY.replace('        dockerfile="llama-server",\n', ""))
    with pytest.raises(NoServingImage, match='dockerfile="llama-server"'):
        choose_inference_dir(entries, "pirate")
    # A directory whose owner model is absent is built with the default recipe, not llama-server.
    entries = read_entries(
        MODELS_PY.replace(
            '"tinychat": ModelConfig(\n        name="tinychat"',
            '"tiny": ModelConfig(\n        name="tiny"',
        )
    )
    assert choose_inference_dir(entries, "pirate")[0] == "thinker-inference"


def test_a_push_starts_the_build_only_on_main_and_matching_paths(tmp_path: Path):
    bare = make_serverless_repo(tmp_path)
    clone = GitClone.clone(str(bare), tmp_path / "clone", branch="main")
    base = clone.head()
    (clone.path / "README.md").write_text("docs\n")
    docs = commit_all(clone.path, "docs")
    assert not starts_build(clone, "build-push-images.yml", branch="main", base=base, head=docs)
    models = clone.path / "config" / "models.py"
    models.write_text(models.read_text().replace("n_ctx=8192", "n_ctx=4096", 1))
    config = commit_all(clone.path, "config")
    assert starts_build(clone, "build-push-images.yml", branch="main", base=docs, head=config)
    assert not starts_build(clone, "build-push-images.yml", branch="lmft/x", base=docs, head=config)
    assert not starts_build(clone, "absent.yml", branch="main", base=docs, head=config)
    assert not starts_build(clone, None, branch="main", base=docs, head=config)
    (clone.path / "app" / "tinychat-inference").mkdir(parents=True)
    (clone.path / "app" / "tinychat-inference" / "Dockerfile").write_text("FROM x\n")
    app = commit_all(clone.path, "image")
    assert starts_build(clone, "build-push-images.yml", branch="main", base=config, head=app)
