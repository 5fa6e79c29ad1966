"""GGUF step: llama.cpp's converter, preflight refusals, lineage, and the quality gate on SmolLM2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from schemas.gguf import GGUFVariant
from tasks.gguf import (
    GGUFLineage,
    GGUFSettings,
    PreflightError,
    QuantType,
    fetch_converter,
    read_metadata,
)
from tasks.gguf.convert import convert_to_gguf, preflight_gguf
from tasks.gguf.converter import installed_llama_cpp_version, run_converter
from tasks.gguf.lineage import KV_STRING_LIMIT, lineage_overrides
from tasks.gguf.preflight import check_model
from tasks.gguf.quality import check_gguf_quality, find_degeneration
from tasks.gguf.quantize import quantize_file


@pytest.fixture(scope="module")
def converter():
    return fetch_converter()


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_converter_matches_installed_llama_cpp(converter):
    assert converter.version == installed_llama_cpp_version()
    assert converter.script.exists() and (converter.gguf_py / "gguf" / "gguf_writer.py").exists()
    assert {"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"} <= set(
        converter.architectures
    )


def test_preflight_refuses_unsupported_architecture(converter, tiny_llama, tmp_path):
    model = copy_model(tiny_llama, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["TotallyNewForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        PreflightError, match="'TotallyNewForCausalLM'.*not supported by llama.cpp's converter"
    ):
        check_model(model, converter, GGUFSettings(), tmp_path / "out")


def test_preflight_refuses_model_without_chat_template(converter, tiny_llama, tmp_path):
    model = copy_model(tiny_llama, tmp_path / "model")
    (model / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with pytest.raises(PreflightError, match="has no chat template"):
        check_model(model, converter, GGUFSettings(), tmp_path / "out")


def test_preflight_refuses_when_disk_is_too_small(converter, tiny_llama, tmp_path):
    huge_reserve = GGUFSettings(disk_reserve_bytes=shutil.disk_usage(tmp_path).free + 10**12)
    with pytest.raises(PreflightError, match=r"not enough disk space in .*out"):
        check_model(tiny_llama, converter, huge_reserve, tmp_path / "out")


def test_preflight_refuses_i_quants_without_importance_matrix(converter, tiny_llama, tmp_path):
    with pytest.raises(PreflightError, match="IQ4_XS needs an importance matrix"):
        check_model(
            tiny_llama, converter, GGUFSettings(quant_types=[QuantType.IQ4_XS]), tmp_path / "out"
        )


@pytest.mark.parametrize(
    ("text", "finish", "verdict"),
    [
        ("The capital of France is Paris.", "stop", None),
        ("   ", "stop", "empty answer"),
        (
            "L'Étoile, la France, la France, la France, la France, la France, la France",
            "length",
            "repeats 'la France,'",
        ),
        (
            "A long but varied answer that simply ran out of its token budget before",
            "length",
            "no end-of-turn",
        ),
    ],
)
def test_find_degeneration(text, finish, verdict):
    found = find_degeneration(text, finish, max_tokens=96)
    assert (found is None) if verdict is None else (verdict in found)


def test_lineage_overrides_keep_values_llama_cpp_can_store():
    lineage = GGUFLineage(
        base_model="b" * 200, method="sft", pipeline_run_id="run-7", dataset_sha256="0" * 64
    )
    overrides = lineage_overrides(lineage, QuantType.Q8_0)
    assert overrides == {
        "lmft.method": "sft",
        "lmft.pipeline_run_id": "run-7",
        "lmft.dataset_sha256": "0" * 64,
        "lmft.quantization": "Q8_0",
    }
    assert all(len(v.encode()) <= KV_STRING_LIMIT for v in overrides.values())


@pytest.fixture(scope="module")
def smollm2():
    from tasks.jobs.base_model import materialize_embedded_model

    return materialize_embedded_model()


def perturbed_copy(model: Path, target: Path, scale: float) -> Path:
    """The same checkpoint with Gaussian noise of `scale` × each tensor's std added to every weight."""
    import torch
    from safetensors.torch import load_file, save_file

    copy_model(model, target)
    generator = torch.Generator().manual_seed(0)
    weights = load_file(target / "model.safetensors")
    damaged = {
        name: (t + torch.randn(t.shape, generator=generator) * t.float().std() * scale)
        .to(t.dtype)
        .contiguous()
        for name, t in weights.items()
    }
    save_file(damaged, target / "model.safetensors", metadata={"format": "pt"})
    return target


@pytest.mark.slow
def test_gate_passes_faithful_file_and_fails_damaged_one_on_smollm2(
    prefect_server, smollm2, converter, tmp_path
):
    lineage = GGUFLineage(
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct", method="sft", pipeline_run_id="run-42"
    )
    settings = GGUFSettings(
        quant_types=[], prompts=["What is the capital of France?"], max_answer_tokens=48
    )
    plan = preflight_gguf.fn(str(smollm2), lineage, settings, output_dir=str(tmp_path / "gguf"))
    reference = convert_to_gguf.fn(plan, lineage, settings)

    metadata = read_metadata(Path(reference.path))
    assert metadata["general.base_model.0.name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert metadata["lmft.pipeline_run_id"] == "run-42" and metadata["lmft.quantization"] == "F16"
    assert "tokenizer.chat_template" in metadata

    faithful = quantize_file(
        Path(reference.path), tmp_path / "faithful.gguf", QuantType.F16, metadata={}, only_copy=True
    )
    damaged_dir = perturbed_copy(smollm2, tmp_path / "damaged-model", scale=0.3)
    run_converter(converter, damaged_dir, tmp_path / "damaged.gguf")
    damaged = GGUFVariant(
        quant_type=QuantType.F16,
        path=str(tmp_path / "damaged.gguf"),
        size_bytes=(tmp_path / "damaged.gguf").stat().st_size,
        seconds=0.0,
    )
    report = check_gguf_quality.fn(reference, [faithful, damaged], [], settings)

    assert report.reference.passed, report.reference.reasons
    assert "Paris" in report.reference.answers[0].text
    good, bad = report.variants
    assert good.passed and abs(good.delta_nll) < 1e-3
    assert not bad.passed and bad.delta_nll > settings.max_nll_increase
    assert report.chosen == faithful.path
    assert "smallest variant that passed" in report.decision


def test_a_conversion_that_fills_the_disk_says_so_and_where(tiny_llama, small_disk):
    from tasks.gguf.converter import ConverterError, fetch_converter, run_converter

    outfile = small_disk / "tiny.gguf"
    with pytest.raises(ConverterError) as failure:
        run_converter(fetch_converter(), tiny_llama, outfile)

    assert f"the disk holding {small_disk} is full" in str(failure.value)
    assert not outfile.exists()  # the partial file was removed
