"""Parameter counts, memory fit, hardware choice, the catalog, and refusals of bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from huggingface_hub import HfApi
from pydantic import ValidationError

from schemas.request import Backend, DatasetSource, FineTuneRequest, Method
from tasks.costs import (
    EstimateRefused,
    HardwareDoesNotFit,
    ModelSizeUnavailable,
    TrainingMode,
    UnknownFlavor,
    Workload,
    cost_so_far,
    estimate_request,
    estimate_workload,
    load_catalog,
    memory_needed,
    offline_catalog,
    read_model_shape,
    shape_from_config,
)
from tasks.costs.model_size import parameters_from_config
from tasks.validation import TokenStats, ValidationReport
from tests.doubles.hf_jobs_server import HARDWARE

# Published config.json files (Hub, as released).
QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 896,
    "initializer_range": 0.02,
    "intermediate_size": 4864,
    "max_position_embeddings": 32768,
    "max_window_layers": 24,
    "model_type": "qwen2",
    "num_attention_heads": 14,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}


def workload(config: dict, **kwargs) -> Workload:
    shape = shape_from_config(config, model=kwargs.pop("model", "m"))
    defaults = {"rows": 10_000, "tokens": 4_000_000, "seq_len": 1024, "batch_size": 4}
    return Workload(shape=shape, **{**defaults, **kwargs})


def test_parameter_counts_match_the_published_sizes():
    # The safetensors metadata on the Hub reports these exact totals.
    assert parameters_from_config(QWEN25_05B) == 494_032_768
    assert parameters_from_config(LLAMA31_8B) == 8_030_261_248


def test_local_folder_is_sized_from_its_safetensors_headers(tiny_llama):
    shape = read_model_shape(str(tiny_llama))
    config = json.loads((tiny_llama / "config.json").read_text())
    assert "safetensors headers" in shape.source
    assert shape.parameters == parameters_from_config(config)


def test_memory_fit_picks_hardware_and_refuses_what_does_not_fit():
    catalog = offline_catalog()
    qwen_lora = estimate_workload(workload(QWEN25_05B), catalog)
    assert qwen_lora.memory.total_gb < 16 * 0.85 and qwen_lora.hardware == "t4-small"

    llama_lora = workload(LLAMA31_8B, mode=TrainingMode.LORA)
    assert 24 < memory_needed(llama_lora).total_gb < 48 * 0.85  # too big for an A10G, fits an L40S
    assert catalog.get(estimate_workload(llama_lora, catalog).hardware).gpu_memory_gb >= 48
    with pytest.raises(
        HardwareDoesNotFit, match=r"a10g-large has 24 GB.*Flavors that fit: .*l40sx1"
    ):
        estimate_workload(llama_lora, catalog, hardware="a10g-large")

    # Full fine-tuning of 8B needs ~16 bytes/parameter: more than any single GPU holds.
    with pytest.raises(HardwareDoesNotFit, match="largest flavor"):
        estimate_workload(workload(LLAMA31_8B, mode=TrainingMode.FULL), catalog)


def test_memory_grows_with_method_and_mode_as_it_should():
    full_sft = memory_needed(workload(QWEN25_05B, mode=TrainingMode.FULL))
    full_dpo = memory_needed(workload(QWEN25_05B, mode=TrainingMode.FULL, method=Method.DPO))
    lora_dpo = memory_needed(workload(QWEN25_05B, mode=TrainingMode.LORA, method=Method.DPO))
    qlora = memory_needed(workload(LLAMA31_8B, mode=TrainingMode.QLORA))
    lora = memory_needed(workload(LLAMA31_8B, mode=TrainingMode.LORA))
    checkpointed = memory_needed(workload(LLAMA31_8B, gradient_checkpointing=True))
    grpo = memory_needed(workload(QWEN25_05B, method=Method.GRPO, num_generations=8))
    assert full_dpo.reference_model_gb == full_sft.weights_gb and full_sft.reference_model_gb == 0
    assert lora_dpo.reference_model_gb == 0  # the base with adapters disabled is the reference
    assert qlora.weights_gb < lora.weights_gb / 3
    assert checkpointed.activations_gb < lora.activations_gb / 5
    assert grpo.kv_cache_gb > 0


def test_estimate_has_an_ordered_range_a_timeout_and_its_sources():
    estimate = estimate_workload(workload(QWEN25_05B, method=Method.DPO), offline_catalog())
    assert 0 < estimate.low_usd <= estimate.expected_usd <= estimate.high_usd
    assert (
        estimate.low_seconds
        < estimate.expected_seconds
        < estimate.high_seconds
        <= estimate.timeout_seconds
    )
    assert "dated 2026-11-29" in estimate.source and estimate.parameters == 494_032_768
    assert all(q.expected_usd >= estimate.expected_usd for q in estimate.alternatives)


@pytest.fixture
def hub(hf_server, monkeypatch, tmp_path):
    """The Hub double (tests/doubles): its /api/jobs/hardware and repositories, read by the real client."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return HfApi(endpoint=hf_server.url, token=hf_server.token), hf_server


def test_live_catalog_is_read_through_huggingface_hub_and_cached(hub):
    api, server = hub
    catalog = load_catalog(api=api)
    again = load_catalog(api=api)
    assert server.requests == [("GET", "/api/jobs/hardware", 200)]  # then from the cache
    assert catalog.source.startswith("live") and again.source == catalog.source
    a10g = catalog.get("a10g-small")
    listed = next(h for h in HARDWARE if h["name"] == "a10g-small")  # what the double serves
    assert a10g.price_per_hour == pytest.approx(listed["unitCostUSD"] * 60)
    assert a10g.gpu_memory_gb == 24


def test_hub_model_is_sized_from_safetensors_metadata_without_downloading_weights(hub, tiny_llama):
    api, server = hub
    server.repos.seed_folder("org/tiny", tiny_llama)
    shape = read_model_shape("org/tiny", api=api)
    assert shape.source == "safetensors metadata of org/tiny on the Hub"
    assert shape.parameters == read_model_shape(str(tiny_llama)).parameters
    weights = [r for r in server.requests if r[0] == "GET" and "model.safetensors" in r[1]]
    assert weights and all(status == 206 for *_, status in weights)  # ranged reads of the header
    assert (tiny_llama / "model.safetensors").stat().st_size > 100_001
    with pytest.raises(ModelSizeUnavailable, match="cannot read config.json of 'org/missing'"):
        read_model_shape("org/missing", api=api)


def test_cost_so_far_bills_started_minutes():
    start = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    assert cost_so_far(2.4, start, start + timedelta(minutes=30)) == pytest.approx(1.2)
    assert cost_so_far(2.4, start, start + timedelta(seconds=61)) == pytest.approx(0.08)
    assert cost_so_far(2.4, start, start - timedelta(minutes=5)) == 0


@pytest.fixture
def qwen_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_05B))
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "hello"}\n')
    return tmp_path


def report_for(request: FineTuneRequest, rows: int = 1000) -> ValidationReport:
    stats = TokenStats(
        rows=rows,
        total_tokens=rows * 300,
        mean_tokens=300,
        max_tokens=900,
        p95_tokens=600,
        over_max_length=0,
        max_length=1024,
        exact=True,
        tokenizer="t",
        chat_template=True,
        rows_per_second=1000.0,
    )
    return ValidationReport(
        dataset=request.dataset.path,
        method=request.method,
        row_count=rows,
        columns=["text"],
        token_stats=stats,
    )


def test_bad_input_is_refused_before_any_spend(qwen_dir):
    base = {
        "base_model": str(qwen_dir),
        "dataset": {"path": str(qwen_dir / "rows.jsonl")},
        "backend": "hf-jobs",
    }
    with pytest.raises(UnknownFlavor, match=r"'h100' is not an HF Jobs flavor.*a10g-small"):
        request = FineTuneRequest.model_validate({**base, "hardware": "h100"})
        estimate_request(request, report_for(request), catalog=offline_catalog())
    for field, value in (
        ("batch_size", -1),
        ("learning_rate", 5.0),
        ("max_length", 10_000_000),
        ("epochs", 0),
    ):
        with pytest.raises(ValidationError, match=field):
            FineTuneRequest.model_validate({**base, "hyperparameters": {field: value}})
    with pytest.raises(ValidationError, match="hardware"):
        FineTuneRequest.model_validate({**base, "hardware": "A100 please"})
    too_long = FineTuneRequest.model_validate({**base, "hyperparameters": {"max_length": 65536}})
    with pytest.raises(EstimateRefused, match="max_length: 65536 is longer than .* context"):
        estimate_request(too_long, report_for(too_long), catalog=offline_catalog())
    streamed = FineTuneRequest.model_validate(base)
    with pytest.raises(EstimateRefused, match="max_steps"):
        estimate_request(
            streamed,
            ValidationReport(dataset="x", method=Method.SFT, row_count=0, columns=[]),
            catalog=offline_catalog(),
        )


def test_request_estimate_and_local_backend(qwen_dir):
    request = FineTuneRequest(
        base_model=str(qwen_dir),
        dataset=DatasetSource(path=str(qwen_dir / "rows.jsonl")),
        backend=Backend.HF_JOBS,
        method=Method.SFT,
    )
    estimate = estimate_request(request, report_for(request, rows=5000), catalog=offline_catalog())
    assert (
        estimate.tokens == 5000 * 300 and estimate.price_per_hour > 0 and estimate.timeout_seconds
    )
    local = estimate_request(
        request.model_copy(update={"backend": Backend.LOCAL}), report_for(request)
    )
    assert local.high_usd == 0 and local.hardware == "local"
