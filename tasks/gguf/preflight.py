"""Checks that refuse a conversion before any work: architecture, chat template, disk space."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pydantic import BaseModel

from schemas.gguf import GGUFSettings, QuantType
from tasks.gguf.converter import Converter


class PreflightError(ValueError):
    """The model cannot be converted as asked; the message says what to change."""


class PreflightReport(BaseModel):
    """What the preflight found."""

    architecture: str
    parameters: int
    needed_bytes: int
    free_bytes: int


def read_architecture(model_dir: Path) -> str:
    """The Hugging Face architecture the converter will dispatch on (as its `get_model_architecture` does)."""
    config_file = model_dir / "config.json"
    if not config_file.exists():
        raise PreflightError(
            f"{model_dir} has no config.json; give a Hugging Face model folder (save_pretrained output)"
        )
    config = json.loads(config_file.read_text())
    text_config = config.get("text_config") or {}
    architectures = text_config.get("architectures") or config.get("architectures") or []
    if not architectures:
        raise PreflightError(
            f"{config_file} names no 'architectures'; the converter needs one (e.g. LlamaForCausalLM)"
        )
    return architectures[0]


def has_chat_template(model_dir: Path) -> bool:
    """True when the tokenizer files carry a chat template the converter embeds (same places it looks)."""
    if (model_dir / "chat_template.jinja").is_file():
        return True
    for name, key in (
        ("chat_template.json", "chat_template"),
        ("tokenizer_config.json", "chat_template"),
    ):
        file = model_dir / name
        if file.is_file() and json.loads(file.read_text()).get(key):
            return True
    return False


def count_parameters(model_dir: Path) -> int:
    """Parameter count from the safetensors headers (no tensor is read)."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise PreflightError(
            f"{model_dir} holds no *.safetensors weights; save the model with safe_serialization"
        )
    total = 0
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():
                shape = handle.get_slice(name).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total


def estimate_output_bytes(parameters: int, settings: GGUFSettings) -> int:
    """Peak bytes the conversion writes: the reference twice (raw + lineage copy) and every variant."""
    reference = parameters * settings.reference_type.bits_per_weight / 8
    variants = sum(parameters * q.bits_per_weight / 8 for q in settings.quant_types)
    return int(2 * reference + variants)


def check_model(
    model_dir: Path,
    converter: Converter,
    settings: GGUFSettings,
    output_dir: Path,
    *,
    has_training_text: bool = False,
) -> PreflightReport:
    """Refuse, with a clear error, a model the converter cannot handle or a disk too small for it."""
    architecture = read_architecture(model_dir)
    if architecture not in converter.architectures:
        raise PreflightError(
            f"architecture {architecture!r} (from {model_dir / 'config.json'}) is not supported by llama.cpp's converter "
            f"in llama-cpp-python {converter.version}; supported families include LlamaForCausalLM, Qwen2ForCausalLM, "
            "MistralForCausalLM, Gemma2ForCausalLM. Pick a supported base model or upgrade llama-cpp-python."
        )
    if not has_chat_template(model_dir):
        raise PreflightError(
            f"{model_dir} has no chat template (no chat_template in tokenizer_config.json, no chat_template.jinja); "
            "the deployed server formats requests with the template embedded in the GGUF. Set "
            "tokenizer.chat_template and save the tokenizer into the model folder, then convert again."
        )
    for quant in settings.quant_types:
        if quant.needs_importance_matrix and not has_training_text:
            raise PreflightError(
                f"quant_types: {quant.value} needs an importance matrix, computed from training text: give the "
                "dataset (or held-out texts), or use a K-quant such as Q4_K_M or Q5_K_M"
            )
    if settings.reference_type not in (QuantType.F16, QuantType.BF16):
        raise PreflightError(
            f"reference_type: {settings.reference_type.value} is quantized; the reference must be F16 or BF16"
        )
    parameters = count_parameters(model_dir)
    needed = estimate_output_bytes(parameters, settings) + settings.disk_reserve_bytes
    output_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(output_dir).free
    if free < needed:
        raise PreflightError(
            f"not enough disk space in {output_dir}: the GGUF files need about {needed / 1e9:.2f} GB "
            f"(including a {settings.disk_reserve_bytes / 1e9:.2f} GB reserve), {free / 1e9:.2f} GB are free; "
            "free some space, choose another output folder, or build fewer quant_types"
        )
    return PreflightReport(
        architecture=architecture, parameters=parameters, needed_bytes=needed, free_bytes=free
    )
