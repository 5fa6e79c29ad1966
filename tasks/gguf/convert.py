"""Prefect tasks that turn a Hugging Face model into GGUF files: preflight, convert, quantize."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
from prefect import task
from pydantic import BaseModel

from schemas.gguf import GGUFLineage, GGUFSettings, GGUFVariant, QuantType
from tasks.caching import GGUF_CONVERSION_CACHE, GGUF_QUANTIZATION_CACHE
from tasks.gguf.converter import Converter, fetch_converter, run_converter
from tasks.gguf.imatrix import compute_importance_matrix
from tasks.gguf.lineage import converter_metadata, lineage_overrides
from tasks.gguf.preflight import PreflightError, PreflightReport, check_model
from tasks.gguf.quantize import quantize_file
from tasks.paths import lmft_home

_HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt"]


class ConversionPlan(BaseModel):
    """A model that passed the preflight, and where its GGUF files go."""

    model: str
    model_dir: str
    output_dir: str
    name: str
    converter: Converter
    preflight: PreflightReport

    def file_for(self, quant_type: QuantType) -> Path:
        return Path(self.output_dir) / f"{self.name}-{quant_type.value}.gguf"


def gguf_dir() -> Path:
    """`$LMFT_HOME/gguf`: default home of converted models."""
    path = lmft_home() / "gguf"
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_output_dir(name: str, run_id: str) -> str:
    """Where one pipeline run writes its GGUFs: `$LMFT_HOME/gguf/NAME/RUN`, so a retrained model
    never overwrites the files of the one it may replace (which may still be serving)."""
    return str(gguf_dir() / name / run_id[:8])


def download_model(
    repo_id: str, *, token: str | bool | None = None, endpoint: str | None = None
) -> Path:
    """Weights, config and tokenizer of a Hub model (the Hub cache makes this a no-op the second
    time), read with the given token and endpoint, else with the run's Hub client (`hub_api`)."""
    from huggingface_hub import snapshot_download

    if token is None and endpoint is None:
        from blocks.huggingface import hub_api

        api = hub_api()
        token, endpoint = api.token, api.endpoint
    return Path(
        snapshot_download(repo_id, allow_patterns=_HUB_FILES, token=token, endpoint=endpoint)
    )


def merge_adapter(model_dir: Path, adapter_dir: Path, target: Path) -> Path:
    """Merge a LoRA adapter into its base model (PEFT) and save the merged checkpoint with a tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (adapter_dir / "adapter_config.json").exists():
        raise PreflightError(
            f"adapter: {adapter_dir} has no adapter_config.json; give a PEFT adapter folder"
        )
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(target)
    has_tokenizer = any(
        (adapter_dir / name).exists() for name in ("tokenizer.json", "tokenizer.model")
    )
    AutoTokenizer.from_pretrained(adapter_dir if has_tokenizer else model_dir).save_pretrained(
        target
    )
    return target


def _model_name(model: str, lineage: GGUFLineage) -> str:
    name = lineage.name or Path(model.rstrip("/")).name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


# Time limits of the steps that wait on something outside: pip (the converter's sdist), the Hub
# (model download), llama.cpp's converter run as a subprocess.
PREFLIGHT_TIMEOUT_SECONDS = 3600
CONVERSION_TIMEOUT_SECONDS = 3 * 3600


@task(
    name="preflight-gguf",
    retries=1,
    retry_delay_seconds=10,
    timeout_seconds=PREFLIGHT_TIMEOUT_SECONDS,
)
def preflight_gguf(
    model: str,
    lineage: GGUFLineage,
    settings: GGUFSettings,
    *,
    adapter: str | None = None,
    output_dir: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    has_training_text: bool = False,
) -> ConversionPlan:
    """Fetch the converter, resolve the model (Hub, local, + LoRA), refuse what cannot be converted."""
    from schemas.request import (
        looks_like_local_path,  # schemas.request imports this package's settings
    )

    converter = fetch_converter()
    if looks_like_local_path(model):
        model_dir = Path(model).expanduser().resolve()
        if not model_dir.is_dir():
            raise PreflightError(
                f"model: {model!r} is not a folder; give a Hugging Face model folder or a Hub repo id"
            )
    else:
        model_dir = download_model(model, token=token, endpoint=endpoint)
    name = _model_name(model, lineage)
    out = Path(output_dir).expanduser() if output_dir else gguf_dir() / name
    if adapter:
        merged = out / "merged-model"
        shutil.rmtree(merged, ignore_errors=True)
        model_dir = merge_adapter(model_dir, Path(adapter).expanduser(), merged)
    report = check_model(model_dir, converter, settings, out, has_training_text=has_training_text)
    return ConversionPlan(
        model=model,
        model_dir=str(model_dir),
        output_dir=str(out),
        name=name,
        converter=converter,
        preflight=report,
    )


@task(
    name="convert-to-gguf",
    cache_policy=GGUF_CONVERSION_CACHE,
    persist_result=True,
    timeout_seconds=CONVERSION_TIMEOUT_SECONDS,
)
def convert_to_gguf(
    plan: ConversionPlan, lineage: GGUFLineage, settings: GGUFSettings
) -> GGUFVariant:
    """Convert the model with llama.cpp's converter into the f16/bf16 reference GGUF, lineage included."""
    out = Path(plan.output_dir)
    reference = settings.reference_type
    metadata_file = out / "lineage.json"
    metadata_file.write_text(json.dumps(converter_metadata(lineage), indent=2))
    raw = out / f"{plan.name}.converter-output.gguf"
    started = time.monotonic()
    try:
        run_converter(
            plan.converter,
            Path(plan.model_dir),
            raw,
            outtype=reference.value.lower(),
            metadata=metadata_file,
            log_file=out / "converter.log",
        )
        # Adds the lmft.* keys: an exact tensor copy made by llama.cpp (only_copy), not a GGUF writer of ours.
        variant = quantize_file(
            raw,
            plan.file_for(reference),
            reference,
            metadata=lineage_overrides(lineage, reference),
            threads=settings.threads,
            only_copy=True,
        )
    finally:
        raw.unlink(missing_ok=True)
    return variant.model_copy(update={"seconds": round(time.monotonic() - started, 3)})


@task(name="compute-importance-matrix", cache_policy=GGUF_CONVERSION_CACHE, persist_result=True)
def compute_imatrix(plan: ConversionPlan, reference: GGUFVariant, texts: list[str]) -> str:
    """Importance matrix (mean squared activations per weight column) from training text, saved as .npz; its path."""
    values = compute_importance_matrix(Path(plan.model_dir), Path(reference.path), texts)
    path = Path(plan.output_dir) / f"{plan.name}.imatrix.npz"
    np.savez(path, **values)  # type: ignore[arg-type]  # numpy's stub: a **kwds key might be allow_pickle
    return str(path)


@task(name="quantize-gguf", cache_policy=GGUF_QUANTIZATION_CACHE, persist_result=True)
def quantize_gguf(
    plan: ConversionPlan,
    reference: GGUFVariant,
    quant_type: QuantType,
    lineage: GGUFLineage,
    settings: GGUFSettings,
    imatrix: str | None = None,
) -> GGUFVariant:
    """Quantize the reference GGUF to `quant_type` with llama.cpp, lineage included."""
    return quantize_file(
        Path(reference.path),
        plan.file_for(quant_type),
        quant_type,
        metadata=lineage_overrides(lineage, quant_type),
        threads=settings.threads,
        imatrix=dict(np.load(imatrix)) if imatrix else None,
    )
