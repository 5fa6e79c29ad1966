"""How big a model is, without downloading its weights.

Parameter counts come from the safetensors headers (`HfApi.get_safetensors_metadata` on
the Hub, the file headers for a local folder) and fall back to counting from the config;
the shape (layers, hidden size, vocabulary) always comes from `config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download
from pydantic import BaseModel, Field

from schemas.request import DEFAULT_BASE_MODEL, looks_like_local_path
from tasks.jobs.base_model import EMBEDDED_HUB_ID
from tasks.paths import models_dir


class ModelSizeUnavailable(RuntimeError):
    """The model's config or weights metadata could not be read; the message says what to do."""


class ModelShape(BaseModel):
    """The numbers of a decoder-only transformer that memory and FLOPs depend on."""

    model: str
    source: str = Field(description="Where the parameter count came from.")
    parameters: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    num_experts: int = Field(default=1, ge=1)
    max_position_embeddings: int | None = None


def _text_config(config: dict) -> dict:
    # Multimodal configs nest the language model's config.
    return config.get("text_config") or config


def shape_from_config(
    config: dict, *, model: str, parameters: int | None = None, source: str = ""
) -> ModelShape:
    """The `ModelShape` described by a Hugging Face `config.json` (as a dict)."""
    c = _text_config(config)
    try:
        hidden = c["hidden_size"]
        heads = c["num_attention_heads"]
        shape = ModelShape(
            model=model,
            source=source or "counted from config.json",
            parameters=parameters or 1,
            hidden_size=hidden,
            num_layers=c["num_hidden_layers"],
            vocab_size=c["vocab_size"],
            intermediate_size=c.get("intermediate_size")
            or c.get("moe_intermediate_size")
            or 4 * hidden,
            num_attention_heads=heads,
            num_key_value_heads=c.get("num_key_value_heads") or heads,
            head_dim=c.get("head_dim") or hidden // heads,
            num_experts=c.get("num_local_experts") or c.get("num_experts") or 1,
            max_position_embeddings=c.get("max_position_embeddings"),
        )
    except KeyError as exc:
        raise ModelSizeUnavailable(
            f"{model}: config.json has no {exc.args[0]!r}; only decoder-only transformer configs can be sized"
        ) from None
    if parameters is None:
        shape.parameters = parameters_from_config(config)
    return shape


def parameters_from_config(config: dict) -> int:
    """Parameters of a llama-style decoder (GQA attention, gated MLP, RMSNorm) from its config."""
    c = _text_config(config)
    h, layers, vocab = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
    heads = c["num_attention_heads"]
    kv_heads = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or h // heads
    inter = c.get("intermediate_size") or 4 * h
    experts = c.get("num_local_experts") or c.get("num_experts") or 1
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = h * q + 2 * h * kv + q * h
    # Qwen2 puts biases on q, k and v; other configs say so with attention_bias.
    if c.get("attention_bias") or c.get("model_type") == "qwen2":
        attention += q + 2 * kv
    mlp = 3 * h * inter * experts + (h * experts if experts > 1 else 0)
    per_layer = attention + mlp + 2 * h
    embeddings = vocab * h
    head = (
        0 if c.get("tie_word_embeddings", config.get("tie_word_embeddings", False)) else vocab * h
    )
    return layers * per_layer + h + embeddings + head


def _local_parameter_count(folder: Path) -> int | None:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="numpy") as handle:
            for name in handle.keys():
                count = 1
                for dim in handle.get_slice(name).get_shape():
                    count *= dim
                total += count
    return total


def read_model_shape(
    model: str, *, api: HfApi | None = None, revision: str | None = None
) -> ModelShape:
    """The shape and parameter count of `model`: a local folder, the embedded alias, or a Hub id."""
    if model == DEFAULT_BASE_MODEL:
        materialized = models_dir() / DEFAULT_BASE_MODEL
        model = str(materialized) if (materialized / "config.json").exists() else EMBEDDED_HUB_ID
    if looks_like_local_path(model):
        folder = Path(model).expanduser()
        config_file = folder / "config.json"
        if not config_file.exists():
            raise ModelSizeUnavailable(
                f"base_model: {folder} has no config.json; point it at a Hugging Face checkpoint folder"
            )
        config = json.loads(config_file.read_text())
        parameters = _local_parameter_count(folder)
        source = f"safetensors headers in {folder}" if parameters else f"counted from {config_file}"
        return shape_from_config(config, model=model, parameters=parameters, source=source)
    if api is None:
        from blocks.huggingface import hub_api

        api = hub_api()
    try:
        config_path = hf_hub_download(
            model, "config.json", revision=revision, endpoint=api.endpoint, token=api.token
        )
    except Exception as exc:  # network, 404, gated: all end the estimate with the same advice
        raise ModelSizeUnavailable(
            f"base_model: cannot read config.json of {model!r} from the Hub ({type(exc).__name__}: {str(exc)[:200]}); "
            "check the repo id, set HF_TOKEN for gated models, or pass a local checkpoint folder"
        ) from None
    config = json.loads(Path(config_path).read_text())
    try:
        metadata = api.get_safetensors_metadata(model, revision=revision)
        parameters = sum(metadata.parameter_count.values())
        source = f"safetensors metadata of {model} on the Hub"
    except Exception:  # no safetensors weights (e.g. .bin only): count from the config instead
        parameters, source = None, f"counted from config.json of {model}"
    return shape_from_config(config, model=model, parameters=parameters, source=source)
