"""A small repository shaped like serverless-llm, written by the tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

MODELS_PY = '''"""
Centralized model configuration for serverless-llm (test copy).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from enum import Enum


class ModelCategory(Enum):
    """Model category for port allocation and grouping."""
    CORE = "core"
    SMALL = "small"
    MEDIUM = "medium"
    REASONING = "reasoning"


@dataclass
class ModelConfig:
    """Configuration for a single model."""
    name: str
    port: int
    subdomain: str
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
    n_ctx: int = 4096
    n_threads: int = 4
    n_batch: int = 256
    max_concurrent: int = 2
    routing_category: str = "general"  # general | coding | reasoning | function_calling
    dockerfile: str = "inference"


# =============================================================================
# PORT ALLOCATION SCHEME
# 8100-8199 : Small models (< 7B params)
# =============================================================================

MODELS: dict[str, ModelConfig] = {
    # Core services
    "chat": ModelConfig(
        name="chat",
        port=8080,
        subdomain="chat",
        category=ModelCategory.CORE,
        description="Main chat interface and API gateway",
    ),

    # Small models (< 7B params)
    "qwen": ModelConfig(
        name="qwen",
        port=8100,
        subdomain="qwen",
        category=ModelCategory.SMALL,
        model_id="qwen3-4b",
        display_name="Qwen3 4B",
        rank=2,  # hand-tuned by the maintainers
        hf_repo="unsloth/Qwen3-4B-Instruct-2507-GGUF",
        hf_file="Qwen3-4B-Instruct-2507-Q4_K_M.gguf",
        owned_by="qwen",
    ),
    "phi": ModelConfig(
        name="phi",
        port=8101,
        subdomain="phi",
        category=ModelCategory.SMALL,
        model_id="phi-4-mini",
        display_name="Phi-4 Mini",
        hf_repo="unsloth/Phi-4-mini-instruct-GGUF",
        hf_file="Phi-4-mini-instruct-Q4_K_M.gguf",
        owned_by="microsoft",
        n_ctx=8192
    ),
}


def get_inference_models() -> list[ModelConfig]:
    return sorted((m for m in MODELS.values() if m.category != ModelCategory.CORE), key=lambda m: m.rank)


if __name__ == "__main__":
    m = MODELS[sys.argv[1]]
    print(json.dumps({
        "model_name": m.name,
        "model_repo": m.hf_repo,
        "model_file": m.hf_file,
        "n_ctx": m.n_ctx,
        "n_threads": m.n_threads,
    }))
'''

INFERENCE_YML = """name: Inference
'on':
  workflow_dispatch:
    inputs:
      model:
        description: Model to run
        required: true
        type: choice
        options:
        - phi
        - qwen
      instances:
        description: Parallel instances (1-3)
        required: false
        default: '1'
jobs:
  lookup:
    runs-on: ubuntu-latest
    steps:
    - run: python config/models.py "${{ inputs.model }}"
"""

SYNC_WORKFLOW_CHOICES = '''"""Rewrite the model choice list of inference.yml from config/models.py."""
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
from config.models import get_inference_models

path = Path(".github/workflows/inference.yml")
text = path.read_text()
names = sorted(m.name for m in get_inference_models())
block = "".join(f"        - {n}\\n" for n in names)
text = re.sub(r"(      model:\\n(?:        [a-z].*\\n)*        options:\\n)(?:        - .*\\n)+", lambda m: m.group(1) + block, text)
path.write_text(text)
'''

GENERATE_MODELS_JSON = '''"""Print models.json for the frontend."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
from config.models import get_inference_models

print(json.dumps({"models": [{"key": m.name, "id": m.model_id, "routing_category": m.routing_category}
                             for m in get_inference_models()], "source": "config/models.py"}, indent=2))
'''


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_serverless_repo(root: Path, *, models_py: str = MODELS_PY) -> Path:
    """A bare repository (the 'remote') whose main branch looks like serverless-llm; return its path."""
    work = root / "seed"
    (work / "config").mkdir(parents=True)
    (work / "scripts").mkdir()
    (work / ".github" / "workflows").mkdir(parents=True)
    (work / "app" / "chat" / "frontend" / "public").mkdir(parents=True)
    (work / "config" / "models.py").write_text(models_py)
    (work / "config" / "__init__.py").write_text("")
    (work / ".github" / "workflows" / "inference.yml").write_text(INFERENCE_YML)
    (work / "scripts" / "sync_workflow_choices.py").write_text(SYNC_WORKFLOW_CHOICES)
    (work / "scripts" / "generate_models_json.py").write_text(GENERATE_MODELS_JSON)
    (work / "app" / "chat" / "frontend" / "public" / "models.json").write_text('{"models": []}\n')
    git(work, "init", "-q", "-b", "main")
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
        "seed",
    )
    bare = root / "serverless-llm.git"
    git(root, "clone", "-q", "--bare", str(work), str(bare))
    return bare
