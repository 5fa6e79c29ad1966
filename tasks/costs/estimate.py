"""What a training run will cost, before it starts: hardware, time and money, with a range."""

from __future__ import annotations

import math

from prefect import task
from prefect.artifacts import create_markdown_artifact

from schemas.costs import CostEstimate, FlavorQuote
from schemas.request import Backend, FineTuneRequest, Method
from tasks.costs.catalog import Flavor, HardwareCatalog, load_catalog
from tasks.costs.model_size import ModelShape, read_model_shape
from tasks.costs.workload import (
    MemoryBreakdown,
    TrainingMode,
    Workload,
    memory_needed,
    precision,
    trainable_parameters,
    training_flops,
)
from tasks.validation import ValidationReport
from training.train import PACK_WHEN_MEAN_BELOW

SAFETY_MARGIN = 0.15
"""Fraction of device memory left free when deciding that a workload fits."""
COMPUTE_RANGE = (0.7, 1.0, 1.8)
"""Low / expected / high multipliers of the compute time (utilisation and padding uncertainty)."""
START_SECONDS = (90, 180, 420)
"""Job start: scheduling, pulling the image, `uv` installing the script's dependencies."""
DOWNLOAD_MB_PER_S = (400, 150, 40)
"""Model download from the Hub into the job."""
SAVE_PUSH_MB_PER_S = (200, 80, 25)
"""Merging the adapter, saving, and pushing the model to the Hub."""
CONVERT_MB_PER_S = (300, 100, 30)
"""GGUF conversion and quantization, when it runs inside the job."""
TIMEOUT_FACTOR = 1.2
"""The job timeout is the high estimate × this, rounded up to 5 minutes."""


class HardwareDoesNotFit(ValueError):
    """No flavor (or not the requested one) has the memory the run needs; the message says which would."""


class EstimateRefused(ValueError):
    """The request cannot be estimated as given; the message names the field and what to do."""


def _timeline(
    workload: Workload, flavor: Flavor, *, convert_on_job: bool
) -> tuple[float, float, float]:
    compute = training_flops(workload) / (flavor.effective_tflops * 1e12)
    model_mb = workload.shape.parameters * 2 / 1e6
    out = []
    for i in range(3):
        seconds = compute * COMPUTE_RANGE[i] + START_SECONDS[i]
        seconds += model_mb / DOWNLOAD_MB_PER_S[i] + model_mb / SAVE_PUSH_MB_PER_S[i]
        if convert_on_job:
            seconds += model_mb / CONVERT_MB_PER_S[i]
        out.append(seconds)
    return out[0], out[1], out[2]


def _usd(seconds: float, price: float) -> float:
    # HF Jobs bill by the minute.
    return round(math.ceil(seconds / 60) / 60 * price, 2)


def estimate_workload(
    workload: Workload,
    catalog: HardwareCatalog,
    *,
    hardware: str = "auto",
    convert_on_job: bool = False,
    assumptions: list[str] | None = None,
) -> CostEstimate:
    """Pick the hardware (or check the requested flavor) and estimate time and cost on HF Jobs.

    Raises:
        UnknownFlavor: `hardware` is not in the catalog.
        HardwareDoesNotFit: the run needs more memory than the flavor (or any flavor) has.
    """

    def memory_on(flavor: Flavor) -> MemoryBreakdown:
        return memory_needed(workload, flavor.device)

    def fits(flavor: Flavor) -> bool:
        return memory_on(flavor).total_gb <= flavor.memory_per_device_gb * (1 - SAFETY_MARGIN)

    def quote(flavor: Flavor) -> FlavorQuote:
        _, expected, _ = _timeline(workload, flavor, convert_on_job=convert_on_job)
        return FlavorQuote(
            hardware=flavor.name,
            price_per_hour=flavor.price_per_hour or 0.0,
            expected_usd=_usd(expected, flavor.price_per_hour or 0.0),
            expected_seconds=round(expected),
        )

    # One GPU per job: the training script runs one process, so a second GPU would be paid for and idle.
    priced_gpus = [f for f in catalog.flavors if f.gpu_count == 1 and f.price_per_hour is not None]
    quotes = sorted(
        (quote(f) for f in priced_gpus if fits(f)), key=lambda q: (q.expected_usd, q.price_per_hour)
    )
    if hardware == "auto":
        if not quotes:
            biggest = max(priced_gpus, key=lambda f: f.memory_per_device_gb)
            memory = memory_on(biggest)
            raise HardwareDoesNotFit(
                f"hardware: the run needs {memory.total_gb:.1f} GB on one GPU ({_memory_parts(memory)}); the largest "
                f"flavor, {biggest.name}, has {biggest.memory_per_device_gb:.0f} GB per GPU (with a "
                f"{SAFETY_MARGIN:.0%} margin). Use LoRA, enable gradient_checkpointing, or lower batch_size / max_length"
            )
        flavor = catalog.get(quotes[0].hardware)
    else:
        flavor = catalog.get(hardware)
        if flavor.gpu_count > 1:
            same = [f.name for f in priced_gpus if f.gpu_model == flavor.gpu_model and fits(f)]
            raise EstimateRefused(
                f"hardware: {flavor.name} has {flavor.gpu_count} GPUs, but the training script runs "
                f"one process on one GPU: the other {flavor.gpu_count - 1} would be paid for and left "
                f"idle. Pick a single-GPU flavor ({', '.join(same) or 'auto'})"
            )
        if not flavor.is_gpu:
            raise EstimateRefused(
                f"hardware: {flavor.name} has no GPU; paid training runs on a GPU flavor (or use "
                "backend 'local' for this machine)"
            )
        if flavor.price_per_hour is None:
            raise EstimateRefused(
                f"hardware: {flavor.name} has no known price in {catalog.source}; pick another flavor or "
                "retry when the Hub's live catalog is reachable"
            )
        if not fits(flavor):
            memory = memory_on(flavor)
            would = ", ".join(f"{q.hardware} (${q.expected_usd:.2f})" for q in quotes[:6]) or "none"
            raise HardwareDoesNotFit(
                f"hardware: {flavor.name} has {flavor.memory_per_device_gb:.0f} GB per device; the run needs "
                f"{memory.total_gb:.1f} GB ({_memory_parts(memory)}) plus a {SAFETY_MARGIN:.0%} margin. Flavors that fit: {would}"
            )
    memory = memory_on(flavor)
    price = flavor.price_per_hour or 0.0
    low, expected, high = _timeline(workload, flavor, convert_on_job=convert_on_job)
    timeout = int(math.ceil(high * TIMEOUT_FACTOR / 300) * 300)
    dtypes = precision(workload, flavor.device)
    notes = [
        *(assumptions or []),
        f"{flavor.device} ({workload.mode.value}): weights {dtypes['weights']}, trained "
        f"{dtypes['trainable']}, autocast {dtypes['autocast'] or 'off'} (training/train.py PRECISION)",
    ]
    return CostEstimate(
        backend=Backend.HF_JOBS,
        hardware=flavor.name,
        price_per_hour=price,
        low_usd=_usd(low, price),
        expected_usd=_usd(expected, price),
        high_usd=_usd(high, price),
        low_seconds=round(low),
        expected_seconds=round(expected),
        high_seconds=round(high),
        timeout_seconds=timeout,
        source=catalog.describe(),
        catalog_as_of=catalog.as_of,
        model=workload.shape.model,
        parameters=workload.shape.parameters,
        parameters_source=workload.shape.source,
        trainable_parameters=trainable_parameters(workload),
        tokens=workload.tokens,
        memory=memory,
        memory_available_gb=round(flavor.memory_per_device_gb * (1 - SAFETY_MARGIN), 1),
        alternatives=[q for q in quotes if q.hardware != flavor.name][:5],
        assumptions=notes,
    )


def _memory_parts(memory: MemoryBreakdown) -> str:
    parts = {
        "weights": memory.weights_gb,
        "optimizer+grads": memory.trainable_state_gb,
        "reference": memory.reference_model_gb,
        "activations": memory.activations_gb,
        "logits": memory.logits_gb,
        "kv cache": memory.kv_cache_gb,
        "overhead": memory.overhead_gb,
    }
    return ", ".join(f"{k} {v:.1f}" for k, v in parts.items() if v)


def workload_from_request(
    request: FineTuneRequest, report: ValidationReport, shape: ModelShape
) -> tuple[Workload, list[str]]:
    """The request's training run as a `Workload`, and the assumptions made to get there."""
    h = request.hyperparameters
    notes: list[str] = []
    limit = shape.max_position_embeddings
    if limit and h.max_length > limit:
        raise EstimateRefused(
            f"hyperparameters.max_length: {h.max_length} is longer than {shape.model}'s context "
            f"({limit} tokens); set it to {limit} or less"
        )
    stats = report.token_stats
    if stats is not None and stats.rows:
        mean = min(stats.mean_tokens, h.max_length)
        longest = min(float(stats.p95_tokens), h.max_length)
        rows = stats.rows
    else:
        mean, longest, rows = float(h.max_length), float(h.max_length), report.row_count
        notes.append(
            f"no token statistics in the validation report: every row counted as max_length ({h.max_length}) tokens"
        )
    # train.py's rule (packing=auto): an epoch-based SFT run of short rows is packed.
    packing = request.method is Method.SFT and (
        h.packing
        if h.packing is not None
        else not h.max_steps and mean < PACK_WHEN_MEAN_BELOW * h.max_length
    )
    sequences = h.max_steps * h.batch_size * h.gradient_accumulation_steps if h.max_steps else 0
    if h.max_steps:
        # A packed step trains batch_size full max_length sequences.
        rows_trained = math.ceil(sequences * h.max_length / mean) if packing else sequences
    elif rows:
        rows_trained = math.ceil(rows * h.epochs)
    else:
        raise EstimateRefused(
            f"dataset: the row count of {report.dataset!r} is unknown (a streamed Hub dataset); set "
            "hyperparameters.max_steps so the estimate can bound the run"
        )
    if not packing and request.method is Method.SFT:
        notes.append(
            f"batches padded to their longest row: every row counted as the 95th percentile "
            f"({longest:.0f} tokens) in compute time"
        )
    if not request.lora.enabled:
        mode = TrainingMode.FULL
    else:
        mode = TrainingMode.QLORA if request.lora.quantize == "4bit" else TrainingMode.LORA
    tokens = max(1, math.ceil(rows_trained * mean))
    padded = (
        0
        if packing or request.method is not Method.SFT
        else max(0, math.ceil(rows_trained * longest) - tokens)
    )
    workload = Workload(
        shape=shape,
        method=request.method,
        mode=mode,
        lora_r=request.lora.r,
        seq_len=h.max_length,
        batch_size=h.batch_size,
        gradient_checkpointing=h.gradient_checkpointing,
        rows=max(1, rows_trained),
        tokens=tokens,
        padded_tokens=padded,
        packing=packing,
        num_generations=h.num_generations,
        max_completion_length=h.max_completion_length,
        uses_reference_model=request.method in (Method.DPO, Method.KTO) or h.beta > 0,
    )
    return workload, notes


def free_estimate(hardware: str = "local") -> CostEstimate:
    """The estimate of a run on this machine: no charge."""
    return CostEstimate(
        backend=Backend.LOCAL,
        hardware=hardware,
        price_per_hour=0.0,
        low_usd=0.0,
        expected_usd=0.0,
        high_usd=0.0,
        source="local backend: no charge",
    )


def estimate_request(
    request: FineTuneRequest, report: ValidationReport, *, catalog: HardwareCatalog | None = None
) -> CostEstimate:
    """Estimate `request` on its backend (plain function behind the `estimate_cost` task)."""
    if request.backend is Backend.LOCAL:
        if request.hardware != "auto":
            load_catalog(live=False).get(request.hardware)  # refuses unknown names, with the list
        return free_estimate()
    catalog = catalog or load_catalog()
    if request.hardware != "auto":
        catalog.get(request.hardware)  # unknown flavors are refused before the model is read
    shape = read_model_shape(request.base_model)
    workload, notes = workload_from_request(request, report, shape)
    return estimate_workload(workload, catalog, hardware=request.hardware, assumptions=notes)


@task(name="estimate-cost", timeout_seconds=600)  # the Hub: prices, safetensors headers
def estimate_cost(request: FineTuneRequest, report: ValidationReport) -> CostEstimate:
    """Estimate the run's hardware, time and cost, and publish the estimate as an artifact."""
    estimate = estimate_request(request, report)
    create_markdown_artifact(
        f"# Cost estimate\n\n{estimate.markdown()}\n",
        key="cost-estimate",
        description=f"{estimate.hardware}: ${estimate.expected_usd:.2f} expected",
    )
    return estimate
