"""The estimator and the training script read one precision table; one GPU per job; QLoRA and packing."""

from __future__ import annotations

import pytest

from schemas.request import FineTuneRequest
from tasks.costs import EstimateRefused, TrainingMode, estimate_request, estimate_workload
from tasks.costs import workload as workload_module
from tasks.costs.catalog import offline_catalog
from tasks.costs.estimate import workload_from_request
from tasks.costs.model_size import shape_from_config
from tasks.costs.workload import GB, memory_needed, training_flops
from tests.tasks.costs.test_estimate import (  # noqa: F401 (qwen_dir is a fixture)
    LLAMA31_8B,
    QWEN25_05B,
    qwen_dir,
    report_for,
    workload,
)
from training import train as train_script


def arguments(model, **overrides):
    values = {"model_name_or_path": str(model), "dataset_path": "-", "output_dir": "-"}
    return train_script.ScriptArguments(**{**values, **overrides})


def test_the_dtype_the_script_loads_and_the_one_the_estimator_assumes_are_one_table_entry(
    tiny_llama, monkeypatch
):
    import torch

    assert workload_module.PRECISION is train_script.PRECISION
    shape = shape_from_config({**QWEN25_05B}, model="qwen")

    def weights_bytes(mode: TrainingMode, device: str) -> float:
        w = workload(QWEN25_05B, mode=mode)
        return memory_needed(w, device).weights_gb * GB / shape.parameters

    table = train_script.PRECISION
    loaded = train_script.load_model(arguments(tiny_llama), "cpu", "lora")
    assert loaded.dtype == getattr(torch, table["cpu"]["lora"]["weights"]) == torch.float32
    assert weights_bytes(TrainingMode.LORA, "cpu") == pytest.approx(4.0, rel=0.02)
    assert weights_bytes(TrainingMode.LORA, "cuda-bf16") == pytest.approx(2.0, rel=0.02)
    assert weights_bytes(TrainingMode.QLORA, "cuda-bf16") == pytest.approx(0.55, rel=0.02)
    assert loaded.config._attn_implementation == train_script.ATTENTION

    # Change the table's entry: the script loads, and the estimator counts, the new dtype.
    monkeypatch.setitem(
        table["cpu"], "lora", {"weights": "bfloat16", "trainable": "float32", "autocast": None}
    )
    assert train_script.load_model(arguments(tiny_llama), "cpu", "lora").dtype == torch.bfloat16
    assert weights_bytes(TrainingMode.LORA, "cpu") == pytest.approx(2.0, rel=0.02)


def test_the_t4_trains_in_fp16_and_the_others_in_bf16():
    catalog = offline_catalog()
    assert catalog.get("t4-small").device == "cuda-fp16"
    assert {catalog.get(n).device for n in ("a10g-small", "l4x1", "a100-large", "h200")} == {
        "cuda-bf16"
    }
    assert train_script.PRECISION["cuda-fp16"]["lora"]["autocast"] == "fp16"
    assert "qlora" not in train_script.PRECISION["cpu"]
    estimate = estimate_workload(workload(QWEN25_05B), catalog, hardware="t4-small")
    assert any("cuda-fp16 (lora): weights float16" in note for note in estimate.assumptions)


def test_multi_gpu_flavors_are_never_picked_and_refused_when_asked_for():
    catalog = offline_catalog()
    for w in (workload(LLAMA31_8B), workload(QWEN25_05B, mode=TrainingMode.FULL)):
        estimate = estimate_workload(w, catalog)
        assert catalog.get(estimate.hardware).gpu_count == 1
        assert all(catalog.get(q.hardware).gpu_count == 1 for q in estimate.alternatives)
    with pytest.raises(EstimateRefused, match=r"h200x2 has 2 GPUs.*one process on one GPU.*h200"):
        estimate_workload(workload(QWEN25_05B), catalog, hardware="h200x2")
    # One GPU's throughput: an 8-GPU flavor is no faster than its single-GPU sibling.
    assert catalog.get("a100x8").effective_tflops == catalog.get("a100-large").effective_tflops


def test_a_qlora_request_is_estimated_as_qlora(qwen_dir):  # noqa: F811
    base = {
        "base_model": str(qwen_dir),
        "dataset": {"path": str(qwen_dir / "rows.jsonl")},
        "backend": "hf-jobs",
        "hyperparameters": {"max_steps": 100},
    }
    plain = FineTuneRequest.model_validate(base)
    qlora = FineTuneRequest.model_validate({**base, "lora": {"quantize": "4bit"}})
    shape = shape_from_config(QWEN25_05B, model="qwen")
    assert workload_from_request(qlora, report_for(qlora), shape)[0].mode is TrainingMode.QLORA
    assert workload_from_request(plain, report_for(plain), shape)[0].mode is TrainingMode.LORA
    q = estimate_request(qlora, report_for(qlora), catalog=offline_catalog())
    p = estimate_request(plain, report_for(plain), catalog=offline_catalog())
    assert q.memory is not None and p.memory is not None
    assert q.memory.weights_gb < p.memory.weights_gb / 3
    with pytest.raises(ValueError, match="lora.quantize.*lora.enabled"):
        FineTuneRequest.model_validate({**base, "lora": {"enabled": False, "quantize": "4bit"}})


def test_packing_removes_the_padding_from_the_compute_estimate(qwen_dir):  # noqa: F811
    base = {
        "base_model": str(qwen_dir),
        "dataset": {"path": str(qwen_dir / "rows.jsonl")},
        "backend": "hf-jobs",
        "hyperparameters": {"max_length": 2048},  # rows of 300 tokens: short next to it
    }
    shape = shape_from_config(QWEN25_05B, model="qwen")
    auto = FineTuneRequest.model_validate(base)
    unpacked = FineTuneRequest.model_validate(
        {**base, "hyperparameters": {"max_length": 2048, "packing": False}}
    )
    packed_w, _ = workload_from_request(auto, report_for(auto), shape)
    padded_w, notes = workload_from_request(unpacked, report_for(unpacked), shape)
    assert packed_w.packing and packed_w.padded_tokens == 0
    assert not padded_w.packing and padded_w.tokens == packed_w.tokens
    assert padded_w.padded_tokens == padded_w.rows * 600 - padded_w.tokens  # padded to the p95
    assert training_flops(padded_w) > training_flops(packed_w)
    assert any("95th percentile" in n for n in notes)
    # A max_steps run keeps its steps: auto does not pack it.
    steps = FineTuneRequest.model_validate(
        {**base, "hyperparameters": {"max_length": 2048, "max_steps": 10}}
    )
    assert not workload_from_request(steps, report_for(steps), shape)[0].packing
