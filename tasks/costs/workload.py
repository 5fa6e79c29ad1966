"""What a training run asks of the hardware: GPU memory and FLOPs.

The dtypes are those the training script loads: `PRECISION` in training/train.py, per device
class (cuda-bf16, cuda-fp16, cpu) and mode (full: fp32 weights under bf16/fp16 autocast; LoRA:
a 16-bit base with fp32 adapters; QLoRA: an NF4 base with bf16 adapters). Trained parameters
carry a gradient and two AdamW moments of their own dtype; activations after Korthikanti et al.
2022 (~34·s·h bytes per layer per sequence in 16 bits with fused attention, twice that in fp32;
one layer's worth plus the layer inputs when checkpointing), fp32 logits, a reference model for
DPO/KTO/GRPO when it is not the LoRA base, and a KV cache for GRPO's generations. FLOPs are
6·N per token for full fine-tuning and 4·N with LoRA (no weight gradients of the base), padding
included: without packing the batches are padded to their longest row.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, Field

from schemas.costs import MemoryBreakdown
from schemas.request import Method
from tasks.costs.model_size import ModelShape
from training.train import BYTES_PER_VALUE, PRECISION

DEFAULT_DEVICE = "cuda-bf16"

GB = 1024**3
FRAMEWORK_OVERHEAD_GB = 1.5
"""CUDA context, cuBLAS workspaces, allocator fragmentation."""
GENERATION_EFFICIENCY = 0.1
"""Fraction of the training throughput that token-by-token generation (GRPO) reaches."""


class TrainingMode(str, Enum):
    """Which weights are trained."""

    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"


class Workload(BaseModel):
    """A training run reduced to the numbers memory and time depend on."""

    shape: ModelShape
    method: Method = Method.SFT
    mode: TrainingMode = TrainingMode.LORA
    lora_r: int = Field(default=16, ge=1, le=512)
    seq_len: int = Field(
        default=1024, ge=16, le=131_072, description="Longest sequence (max_length)."
    )
    batch_size: int = Field(default=4, ge=1, le=1024)
    gradient_checkpointing: bool = False
    rows: int = Field(ge=1, description="Rows trained on, all epochs.")
    tokens: int = Field(
        ge=1, description="Tokens of those rows (prompt and answer; the longer answer for DPO)."
    )
    padded_tokens: int = Field(
        default=0, ge=0, description="Padding the batches add (none when packed, padding-free)."
    )
    packing: bool = Field(default=False, description="SFT rows packed into max_length sequences.")
    num_generations: int = Field(default=4, ge=2, le=64)
    max_completion_length: int = Field(default=64, ge=1, le=32_768)
    uses_reference_model: bool = Field(
        default=True, description="KL term on (DPO/KTO always; GRPO when beta > 0)."
    )


def lora_parameters(shape: ModelShape, r: int) -> int:
    """Trainable parameters of rank-`r` LoRA adapters on every linear layer of the decoder."""
    h, inter = shape.hidden_size, shape.intermediate_size
    q, kv = shape.num_attention_heads * shape.head_dim, shape.num_key_value_heads * shape.head_dim
    attention = (h + q) + 2 * (h + kv) + (q + h)
    mlp = 3 * (h + inter) * shape.num_experts
    return r * (attention + mlp) * shape.num_layers


def trainable_parameters(workload: Workload) -> int:
    if workload.mode is TrainingMode.FULL:
        return workload.shape.parameters
    return lora_parameters(workload.shape, workload.lora_r)


def sequences_per_row(method: Method) -> int:
    """Sequences the trainer runs per dataset row: chosen + rejected for DPO, completion + KL sample for KTO."""
    return 2 if method in (Method.DPO, Method.KTO) else 1


def precision(workload: Workload, device: str = DEFAULT_DEVICE) -> dict[str, str | None]:
    """The training script's dtypes for `workload` on `device` (training/train.py's PRECISION)."""
    row = PRECISION.get(device, {})
    if workload.mode.value not in row:
        raise ValueError(
            f"lora.quantize: {workload.mode.value} training does not run on {device} "
            f"(training/train.py PRECISION has {', '.join(row) or 'nothing'} there)"
        )
    return row[workload.mode.value]


def memory_needed(workload: Workload, device: str = DEFAULT_DEVICE) -> MemoryBreakdown:
    """Memory (GB) of one device that one training process needs for `workload` on `device`."""
    s, n = workload.shape, workload.shape.parameters
    dtypes = precision(workload, device)
    weights = n * BYTES_PER_VALUE[str(dtypes["weights"])]
    # A trained value has a gradient and two AdamW moments of its dtype; in full fine-tuning the
    # trained values are the weights, counted above; adapters are a copy of their own.
    per_trained = BYTES_PER_VALUE[str(dtypes["trainable"])]
    copies = 3 if workload.mode is TrainingMode.FULL else 4
    trainable = trainable_parameters(workload) * per_trained * copies
    activation_scale = 1.0 if dtypes["autocast"] else BYTES_PER_VALUE[str(dtypes["weights"])] / 2
    # With LoRA the reference model is the base with adapters disabled: no second copy.
    has_reference = workload.uses_reference_model and workload.method is not Method.SFT
    reference = weights if has_reference and workload.mode is TrainingMode.FULL else 0.0
    if workload.method is Method.GRPO:
        sequences, seq_len = workload.batch_size, workload.seq_len + workload.max_completion_length
    else:
        sequences, seq_len = (
            workload.batch_size * sequences_per_row(workload.method),
            workload.seq_len,
        )
    tokens_in_flight = sequences * seq_len
    per_layer = 34 * s.hidden_size * tokens_in_flight * activation_scale
    if workload.gradient_checkpointing:
        activations = (
            2 * s.hidden_size * tokens_in_flight * s.num_layers * activation_scale + per_layer
        )
    else:
        activations = per_layer * s.num_layers
    logits = tokens_in_flight * s.vocab_size * 8  # fp32 logits and their gradient
    kv_cache = 0.0
    if workload.method is Method.GRPO:
        generations = workload.batch_size * workload.num_generations
        kv_cache = 2 * s.num_layers * s.num_key_value_heads * s.head_dim * 2 * seq_len * generations
    parts = [weights, trainable, reference, activations, logits, kv_cache]
    total = sum(parts) / GB + FRAMEWORK_OVERHEAD_GB
    gb = [round(p / GB, 2) for p in parts]
    return MemoryBreakdown(
        weights_gb=gb[0],
        trainable_state_gb=gb[1],
        reference_model_gb=gb[2],
        activations_gb=gb[3],
        logits_gb=gb[4],
        kv_cache_gb=gb[5],
        overhead_gb=FRAMEWORK_OVERHEAD_GB,
        total_gb=round(total, 2),
    )


def training_flops(workload: Workload) -> float:
    """Floating-point operations of the whole run (all epochs)."""
    n = workload.shape.parameters
    per_token = (6 if workload.mode is TrainingMode.FULL else 4) * n
    if workload.gradient_checkpointing:
        per_token += 2 * n  # the forward pass runs twice
    if workload.method is Method.GRPO:
        # Each prompt is trained with num_generations completions; generating them runs
        # token by token, counted at GENERATION_EFFICIENCY of the training throughput.
        completions = workload.rows * workload.num_generations * workload.max_completion_length
        trained = workload.tokens * workload.num_generations + completions
        flops = trained * per_token + completions * 2 * n / GENERATION_EFFICIENCY
    else:
        trained = (workload.tokens + workload.padded_tokens) * sequences_per_row(workload.method)
        flops = trained * per_token
    if workload.uses_reference_model and workload.method is not Method.SFT:
        flops += trained * 2 * n  # reference log-probs: one forward pass
    return float(flops)
