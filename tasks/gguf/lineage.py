"""Lineage of a fine-tuned model, as GGUF metadata.

Two layers, both written by llama.cpp's own code:
- the standard `general.*` keys (`general.base_model.0.name`, `general.dataset.0.name`, …)
  through the converter's `--metadata` override file, which Hugging Face and llama.cpp show;
- `lmft.*` keys (run id, registry entry, eval loss, method, dataset hash, quantization type) through the
  `kv_overrides` of `llama_model_quantize`, the library call behind `llama-quantize --override-kv`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from schemas.gguf import GGUFLineage, QuantType

if TYPE_CHECKING:  # schemas.request imports GGUFSettings from this package: import it lazily
    from schemas.request import DatasetSource, FineTuneRequest

KV_STRING_LIMIT = 127
"""llama.cpp's `llama_model_kv_override.val_str` holds 128 bytes including the terminating NUL."""


def hash_dataset(source: DatasetSource) -> str:
    """sha256 over a local dataset's files (names and bytes), or over a Hub dataset's id, config, split and revision."""
    digest = hashlib.sha256()
    if source.is_local:
        path = Path(source.path).expanduser()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(file.name.encode() + b"\0")
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    else:
        digest.update(
            f"{source.path}@{source.revision or 'main'}:{source.config or ''}:{source.split}".encode()
        )
    return digest.hexdigest()


def converter_metadata(lineage: GGUFLineage) -> dict:
    """The converter's `--metadata` override: standard `general.*` keys."""
    base = {"name": lineage.base_model}
    from schemas.request import looks_like_local_path

    if not looks_like_local_path(lineage.base_model):
        base["repo_url"] = f"https://huggingface.co/{lineage.base_model}"
    metadata: dict = {"general.base_models": [base], "general.tags": ["lm-fine-tuning"]}
    if lineage.name:
        metadata["general.name"] = lineage.name
    if lineage.dataset:
        dataset = {"name": lineage.dataset}
        if lineage.dataset_sha256:
            dataset["version"] = f"sha256:{lineage.dataset_sha256}"
        metadata["general.datasets"] = [dataset]
    if lineage.method:
        metadata["general.tags"].append(lineage.method)
        metadata["general.description"] = (
            f"Fine-tuned from {lineage.base_model} with {lineage.method}"
            + (f" by pipeline run {lineage.pipeline_run_id}" if lineage.pipeline_run_id else "")
            + (f"; model registry entry {lineage.registry_id}" if lineage.registry_id else "")
            + (f"; eval loss {lineage.eval_loss:.4f}" if lineage.eval_loss is not None else "")
        )
    return metadata


def lineage_overrides(lineage: GGUFLineage, quant_type: QuantType) -> dict[str, str]:
    """`lmft.*` keys for one file; values longer than llama.cpp's 127-byte limit stay in `general.*` only."""
    values = {
        "lmft.base_model": lineage.base_model,
        "lmft.dataset": lineage.dataset,
        "lmft.dataset_sha256": lineage.dataset_sha256,
        "lmft.method": lineage.method,
        "lmft.pipeline_run_id": lineage.pipeline_run_id,
        "lmft.registry_id": lineage.registry_id,
        "lmft.eval_loss": None if lineage.eval_loss is None else f"{lineage.eval_loss:.6g}",
        "lmft.quantization": quant_type.value,
    }
    return {k: v for k, v in values.items() if v is not None and len(v.encode()) <= KV_STRING_LIMIT}


def read_metadata(path: Path) -> dict[str, object]:
    """A GGUF's key/value metadata as Python values (tokenizer arrays left out)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    values: dict[str, object] = {}
    for name, field in reader.fields.items():
        if name.startswith("tokenizer.ggml.") or name.startswith("GGUF."):
            continue
        values[name] = field.contents()
    return values


def lineage_for_request(
    request: FineTuneRequest, pipeline_run_id: str | None, *, eval_loss: float | None = None
) -> GGUFLineage:
    """The lineage of the model a `finetune` run trains; its registry entry is the run."""
    from schemas.request import DEFAULT_BASE_MODEL
    from tasks.jobs.base_model import EMBEDDED_HUB_ID

    base = EMBEDDED_HUB_ID if request.base_model == DEFAULT_BASE_MODEL else request.base_model
    return GGUFLineage(
        base_model=base,
        dataset=request.dataset.path,
        dataset_sha256=hash_dataset(request.dataset),
        method=request.method.value,
        pipeline_run_id=pipeline_run_id,
        name=request.output_name,
        registry_id=pipeline_run_id,
        eval_loss=eval_loss,
    )
