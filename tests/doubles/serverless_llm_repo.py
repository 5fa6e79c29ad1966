"""A small repository that behaves like `jonasneves/serverless-llm`, written for the tests.

Written from a reading of the real repository (config/models.py, scripts/*.py,
.github/workflows/inference.yml, build-push-images.yml, .github/actions/inference/action.yml),
not copied from it. What matters is reproduced:

- `config/models.py`: a `ModelConfig` dataclass with the real field names and defaults
  (`inference_dir`, `dockerfile="inference"`, `rank=99`, ...), a `MODELS` dict, models sorted
  by rank, and the command line the workflows read: `python config/models.py NAME` prints the
  JSON the inference action parses (`model_dir` is the entry's `inference_dir`, `null` when
  unset), `--inference-dirs` prints the Build matrix (one directory per model, repeats kept).
  Several entries share one generic llama-server image (`dockerfile="llama-server"`), as the
  real fine-tunes share `lfm2mini-inference`.
- `scripts/generate_models_json.py` rewrites `models.json` in place: the self-hosted list is
  regenerated, every other entry (the API models) is kept as it was, and only the self-hosted
  list is printed (for the frontend build).
- `scripts/sync_workflow_choices.py` rewrites the `model` choices of `inference.yml`.
- `build-push-images.yml` triggers on pushes to `main` touching `config/**`, `app/shared/**`, ...
  (the GitHub double reads these filters and runs the build when a push matches).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MODELS_PY = '''"""Model settings of the test serverless-llm: the one place ports, images and weights are set."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ModelCategory(Enum):
    """Where a model's port comes from."""
    SMALL = "small"
    MEDIUM = "medium"
    REASONING = "reasoning"


@dataclass
class ModelConfig:
    """One served model."""
    name: str
    port: int
    category: ModelCategory
    model_id: str | None = None
    display_name: str | None = None
    inference_dir: str | None = None
    description: str | None = None
    rank: int = 99
    default: bool = False
    hf_repo: str | None = None
    hf_file: str | None = None
    owned_by: str | None = None
    chat_format: str | None = None
    workflow_file: str | None = None
    n_ctx: int = 4096
    n_threads: int = 4
    n_batch: int = 256
    max_concurrent: int = 2
    kv_cache_quant: bool = True
    flash_attn: bool = True
    routing_category: str | None = None
    # image recipe: "inference" (python server) or "llama-server" (generic, loads any GGUF)
    dockerfile: str = "inference"


# Ports: 8100-8199 small, 8200-8299 medium, 8300-8399 reasoning.

MODELS: dict[str, ModelConfig] = {
    # Small models
    "tinychat": ModelConfig(
        name="tinychat",
        port=8100,
        category=ModelCategory.SMALL,
        model_id="tinychat-350m",
        display_name="TinyChat 350M",
        inference_dir="tinychat-inference",
        description="Fast small chat model \u2014 the arena's quickest",
        rank=3,
        hf_repo="acme/TinyChat-350M-GGUF",
        hf_file="TinyChat-350M-Q4_K_M.gguf",
        owned_by="acme",
        n_ctx=8192,
        routing_category="general",
        dockerfile="llama-server",
    ),
    "tinyrisk": ModelConfig(
        name="tinyrisk",
        port=8101,
        category=ModelCategory.SMALL,
        model_id="tinychat-350m-risk",
        display_name="TinyChat Risk",
        inference_dir="tinychat-inference",
        description="TinyChat fine-tuned on risk reports",
        rank=6,  # hand-tuned by the maintainers
        hf_repo="acme/tinychat-risk-GGUF",
        hf_file="tinychat-risk.Q4_K_M.gguf",
        owned_by="acme",
        routing_category="general",
        dockerfile="llama-server",
    ),
    "coder": ModelConfig(
        name="coder",
        port=8102,
        category=ModelCategory.SMALL,
        model_id="coder-3b",
        display_name="Coder 3B",
        inference_dir="coder-inference",
        description="Code model served by the python image",
        rank=2,
        hf_repo="acme/Coder-3B-GGUF",
        hf_file="Coder-3B-Q4_K_M.gguf",
        owned_by="acme",
        routing_category="coding"
    ),

    # Reasoning models
    "thinker": ModelConfig(
        name="thinker",
        port=8300,
        category=ModelCategory.REASONING,
        model_id="thinker-4b",
        display_name="Thinker 4B",
        inference_dir="thinker-inference",
        description="Reasoning traces, 32K context",
        rank=1,
        hf_repo="acme/Thinker-4B-GGUF",
        hf_file="Thinker-4B-Q4_K_M.gguf",
        owned_by="acme",
        kv_cache_quant=False,
        routing_category="reasoning",
        dockerfile="llama-server",
    ),
}


def get_model(name: str) -> ModelConfig:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"no model {name!r}; known: {', '.join(MODELS)}") from None


def get_inference_models() -> list[ModelConfig]:
    """Every model, best rank first (ties keep file order)."""
    return sorted(MODELS.values(), key=lambda model: model.rank)


if __name__ == "__main__":
    import json
    import sys

    args = sys.argv[1:]
    if not args:
        for model in get_inference_models():
            print(f"{model.rank:>3} {model.name:<12} :{model.port}")
        sys.exit(0)
    if args[0] == "--inference-dirs":
        print(json.dumps([model.inference_dir for model in get_inference_models()]))
        sys.exit(0)
    if args[0] == "--inference-names":
        print(json.dumps([model.name for model in get_inference_models()]))
        sys.exit(0)
    try:
        model = get_model(args[0])
    except KeyError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
    if len(args) > 1:
        value = getattr(model, args[1], None)
        if value is None:
            print(f"Unknown field: {args[1]}", file=sys.stderr)
            sys.exit(1)
        print(value)
        sys.exit(0)
    print(json.dumps({
        "model_name": model.name,
        "model_dir": model.inference_dir,
        "model_repo": model.hf_repo,
        "model_file": model.hf_file,
        "display_name": model.display_name,
        "n_ctx": model.n_ctx,
        "n_threads": model.n_threads,
        "n_batch": model.n_batch,
        "max_concurrent": model.max_concurrent,
        "kv_cache_quant": model.kv_cache_quant,
        "flash_attn": model.flash_attn,
        "dockerfile": model.dockerfile,
    }))
'''

GENERATE_MODELS_JSON = '''"""Regenerate the self-hosted models of models.json from config/models.py, in place.

API models (any entry whose type is not "self-hosted") are kept untouched. The
self-hosted list is also printed, for the frontend build that parses it.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from config.models import get_inference_models  # noqa: E402

TARGET = HERE / "app" / "chat" / "frontend" / "public" / "models.json"


def self_hosted() -> list[dict]:
    return [
        {
            "id": model.model_id,
            "key": model.name,
            "name": model.display_name,
            "type": "self-hosted",
            "priority": model.rank,
            "context_length": model.n_ctx,
            "owned_by": model.owned_by,
            "description": model.description,
            "routing_category": model.routing_category,
        }
        for model in get_inference_models()
    ]


local = self_hosted()
document = json.loads(TARGET.read_text())
kept = [entry for entry in document["models"] if entry.get("type") != "self-hosted"]
document["models"] = local + kept
document["source"] = "config/models.py"
document.pop("fetchedAt", None)
TARGET.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\\n")
print(json.dumps({"models": local, "source": "config/models.py"}, indent=2))
'''

SYNC_WORKFLOW_CHOICES = '''"""Make the `model` choices of inference.yml list every model of config/models.py."""

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from config.models import get_inference_models  # noqa: E402

workflow = HERE / ".github" / "workflows" / "inference.yml"
text = workflow.read_text()
lines = "".join(f"          - {model.name}\\n" for model in get_inference_models())
updated = re.sub(r"        options:\\n(?:          - \\S+\\n?)+", lambda _: "        options:\\n" + lines, text)
if updated == text:
    print("inference.yml choices are already up to date")
else:
    workflow.write_text(updated)
    print("updated inference.yml choices")
'''

INFERENCE_YML = """name: Inference
run-name: "${{ inputs.model }}"
'on':
  workflow_dispatch:
    inputs:
      model:
        description: 'Model name'
        required: true
        type: choice
        options:
          - thinker
          - coder
          - tinychat
          - tinyrisk
      benchmark_after:
        description: 'Benchmark once healthy'
        required: false
        default: false
        type: boolean
permissions:
  actions: write
  contents: read
  packages: read
jobs:
  inference:
    name: "${{ inputs.model }}"
    runs-on: ubuntu-24.04-arm
    steps:
      - uses: actions/checkout@v4
      - uses: ./.github/actions/inference
        with:
          model_name: ${{ inputs.model }}
          workflow_file: inference.yml
"""

BUILD_YML = """name: Build
'on':
  push:
    branches:
      - main
    paths:
      - 'app/shared/**'
      - 'app/*/Dockerfile'
      - 'app/*/requirements.txt'
      - 'config/**'
      - '.github/workflows/build-push-images.yml'
  workflow_dispatch:
    inputs:
      models:
        description: 'Models to build (comma-separated, or "all")'
        default: 'all'
        type: string
jobs:
  detect-changes:
    runs-on: ubuntu-24.04-arm
    steps:
      - uses: actions/checkout@v4
      # config/** or app/shared/** changed: matrix = python3 config/models.py --inference-dirs
  build-and-push:
    needs: detect-changes
    runs-on: ubuntu-24.04-arm
    steps:
      # recipe: `dockerfile` of the model named like the directory without "-inference";
      # pushes ghcr.io/OWNER/lm-arena/DIR:latest
      - run: echo build
"""

ACTION_YML = """name: Run inference server
description: Pulls the model's image and serves it behind a tunnel
inputs:
  model_name:
    required: true
  workflow_file:
    required: true
runs:
  using: composite
  steps:
    - name: Read inference config
      id: config
      shell: bash
      run: |
        CONFIG=$(python3 config/models.py "${{ inputs.model_name }}")
        echo "model_dir=$(echo "$CONFIG" | jq -r '.model_dir')" >> $GITHUB_OUTPUT
    - name: Pull inference image
      shell: bash
      run: docker pull "ghcr.io/${{ github.repository_owner }}/lm-arena/${{ steps.config.outputs.model_dir }}:latest"
    - name: Start inference server
      shell: bash
      run: echo "docker run ... until /health says healthy"
"""

API_MODELS = [
    {
        "id": "gpt-4.1",
        "name": "GPT-4.1",
        "type": "api",
        "priority": 1,
        "context_length": 1048576,
        "publisher": "OpenAI",
        "summary": "Long context \u2014 1M tokens",
        "capabilities": ["agents", "streaming", "tool-calling"],
    },
    {
        "type": "api",
        "id": "mistral-small",
        "priority": 4,
        "publisher": "Mistral AI",
        "summary": "Compact, multilingual (fran\u00e7ais, espa\u00f1ol)",
        "capabilities": [],
    },
    {
        "id": "deepseek-r1",
        "name": "DeepSeek R1",
        "type": "api",
        "priority": 7,
        "context_length": 128000,
        "publisher": "DeepSeek",
        "tags": {"reasoning": True, "price": None},
    },
]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def commit_all(work: Path, message: str) -> str:
    git(work, "add", "-A")
    git(
        work,
        "-c",
        "user.name=maintainer",
        "-c",
        "user.email=m@example.org",
        "commit",
        "-q",
        "-m",
        message,
    )
    return git(work, "rev-parse", "HEAD")


def make_serverless_repo(
    root: Path, *, models_py: str = MODELS_PY, llama_server: bool = True
) -> Path:
    """A bare repository (the 'remote') whose `main` behaves like serverless-llm; return its path.

    `llama_server=False`: no entry uses the generic llama-server image.
    """
    if not llama_server:
        models_py = models_py.replace('        dockerfile="llama-server",\n', "")
    work = root / "seed"
    files = {
        ".gitignore": "__pycache__/\n*.py[cod]\n",
        "config/__init__.py": "",
        "config/models.py": models_py,
        "scripts/generate_models_json.py": GENERATE_MODELS_JSON,
        "scripts/sync_workflow_choices.py": SYNC_WORKFLOW_CHOICES,
        ".github/workflows/inference.yml": INFERENCE_YML,
        ".github/workflows/build-push-images.yml": BUILD_YML,
        ".github/actions/inference/action.yml": ACTION_YML,
        "app/shared/Dockerfile.llama-server": "FROM debian:stable-slim\n",
        "app/shared/Dockerfile.inference": "FROM python:3.12-slim\n",
        "app/chat/frontend/public/models.json": json.dumps(
            {"models": API_MODELS, "fetchedAt": "2026-11-30T00:00:00Z"},
            indent=2,
            ensure_ascii=False,
        )
        + "\n",
    }
    for relative, text in files.items():
        path = work / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    # The maintainers' pre-commit hook regenerates the derived files before each commit
    # (a broken config/models.py leaves them as they are).
    for script in ("scripts/sync_workflow_choices.py", "scripts/generate_models_json.py"):
        subprocess.run([sys.executable, script], cwd=work, capture_output=True)
    git(work, "init", "-q", "-b", "main")
    commit_all(work, "seed")
    bare = root / "serverless-llm.git"
    git(root, "clone", "-q", "--bare", str(work), str(bare))
    return bare
