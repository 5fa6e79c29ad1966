"""Put a local GGUF where serverless-llm's server downloads it from: a Hugging Face repo."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi

from blocks.huggingface import hub_api
from tasks.serving.serverless_llm.names import check_hf_location

HF_URI_PREFIX = "hf://"


def parse_hf_uri(uri: str) -> tuple[str, str]:
    """`hf://owner/repo/path/file.gguf` → (`owner/repo`, `path/file.gguf`)."""
    parts = uri.removeprefix(HF_URI_PREFIX).split("/", 2)
    if len(parts) != 3:
        raise ValueError(f"{uri!r} must look like hf://owner/repo/file.gguf")
    repo, file = f"{parts[0]}/{parts[1]}", parts[2]
    check_hf_location(repo, file)
    return repo, file


def publish_gguf(gguf_path: str, *, hf_repo: str, endpoint: str | None = None) -> tuple[str, str]:
    """Upload a local GGUF to `hf_repo` (created private if missing); return (repo, file).

    The token (and, unless given, the endpoint) come from the run's Hub client (`hub_api`).
    """
    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    check_hf_location(hf_repo, path.name)
    hub = hub_api()
    api = HfApi(endpoint=endpoint or hub.endpoint, token=hub.token)
    api.create_repo(hf_repo, private=True, exist_ok=True)
    api.upload_file(
        path_or_fileobj=str(path),
        path_in_repo=path.name,
        repo_id=hf_repo,
        commit_message=f"Upload {path.name} (lm-fine-tuning)",
    )
    return hf_repo, path.name
