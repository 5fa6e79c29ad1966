"""The `convert` flow end to end on a tiny random llama: every variant built, loaded, gated."""

from __future__ import annotations

from pathlib import Path

from flows.convert import convert
from schemas.request import DatasetSource
from tasks.gguf import GGUFLineage, GGUFSettings, QuantType, hash_dataset, read_metadata
from tests.team import task_run_states

EXAMPLE = Path(__file__).parents[2] / "examples" / "pirate_chat.jsonl"


def test_convert_builds_loads_and_gates_every_variant(prefect_server, tiny_llama, tmp_path):
    dataset = DatasetSource(path=str(EXAMPLE))
    lineage = GGUFLineage(
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        dataset=str(EXAMPLE),
        dataset_sha256=hash_dataset(dataset),
        method="sft",
        pipeline_run_id="run-tiny",
        name="tiny-llama",
    )
    quant_types = [
        QuantType.Q4_K_M,
        QuantType.Q8_0,
        QuantType.IQ4_XS,
    ]  # IQ4_XS: imatrix from the dataset
    settings = GGUFSettings(
        quant_types=quant_types, prompts=["What is the capital of France?"], max_answer_tokens=16
    )

    def run_convert():
        return convert(
            str(tiny_llama),
            lineage=lineage,
            settings=settings,
            output_dir=str(tmp_path),
            dataset=dataset,
            return_state=True,
        )

    result = run_convert().result()

    files = {v.quant_type: Path(v.path) for v in result.artifacts.all_files}
    assert set(files) == {QuantType.F16, *quant_types}
    file_types = {
        QuantType.F16: 1,
        QuantType.Q8_0: 7,
        QuantType.Q4_K_M: 15,
        QuantType.IQ4_XS: 30,
    }  # llama_ftype values
    for quant_type, path in files.items():
        metadata = read_metadata(path)
        assert metadata["general.file_type"] == file_types[quant_type]
        assert metadata["lmft.quantization"] == quant_type.value
        assert metadata["lmft.dataset_sha256"] == lineage.dataset_sha256
        assert metadata["general.dataset.0.name"] == str(EXAMPLE)
    assert (tmp_path / "tiny-llama.imatrix.npz").exists()
    quality = result.quality
    assert quality.held_out_texts == 8 and quality.held_out_tokens > 100
    for check in (quality.reference, *quality.variants):
        assert check.load_seconds > 0 and check.mean_nll > 0 and len(check.answers) == 1
    # A random 2-layer model rambles: nothing passes, so the f16 reference is deployed, and the report says so.
    assert not any(v.passed for v in quality.variants)
    assert quality.chosen == str(files[QuantType.F16]) == result.chosen
    assert quality.decision.startswith("Deploying the F16 reference: no quantized variant passed")
    assert "Warning: the reference itself answers badly" in quality.decision

    # Run again, as a retried or handed-over run would: conversion, importance matrix,
    # quantizations and the quality gate come from the cache, and give the same files.
    again = run_convert()
    expected = {
        "convert-to-gguf": ["Cached"],
        "compute-importance-matrix": ["Cached"],
        "quantize-gguf": ["Cached"] * len(quant_types),
        "check-gguf-quality": ["Cached"],
    }
    states = task_run_states(
        again.state_details.flow_run_id,
        until=lambda found: all(found.get(name) == want for name, want in expected.items()),
    )
    assert {name: states.get(name) for name in expected} == expected
    repeated = again.result()
    assert repeated.artifacts.reference == result.artifacts.reference
    assert repeated.artifacts.variants == result.artifacts.variants
    assert repeated.quality == result.quality
