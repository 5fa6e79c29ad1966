"""The HF Jobs hardware catalog: flavors, their GPUs and hourly prices.

Live prices come from `HfApi.list_jobs_hardware()` and are cached in
`$LMFT_HOME/cache/jobs-hardware.json` for `CATALOG_TTL_SECONDS`; when the Hub cannot be
reached the dated table below is used, and every estimate says which source it used.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime
from typing import NamedTuple

from huggingface_hub import HfApi
from huggingface_hub.constants import is_offline_mode
from pydantic import BaseModel, Field

from tasks.paths import lmft_home

logger = logging.getLogger(__name__)

CATALOG_TTL_SECONDS = 6 * 3600
OFFLINE_PRICES_AS_OF = date(2026, 11, 29)
OFFLINE_SOURCE = (
    f"offline table of HF Jobs prices, dated {OFFLINE_PRICES_AS_OF.isoformat()} "
    "(huggingface.co/docs/hub/jobs-pricing)"
)


class GpuSpec(NamedTuple):
    """What one GPU of a model offers to training."""

    memory_gb: float
    peak_tflops: float  # dense bf16 (fp16 on T4) tensor-core peak
    utilisation: float  # model FLOPs utilisation assumed for TRL training on it
    device: str = "cuda-bf16"  # the row of training/train.py's PRECISION table it trains with


# The one place where throughput assumptions live. Utilisation is the fraction of peak
# that Hugging Face Trainer + TRL typically reach on one GPU (no custom kernels):
# older/smaller cards reach less, the H200 is often memory-bandwidth bound at small batch.
GPU_SPECS: dict[str, GpuSpec] = {
    "T4": GpuSpec(16, 65, 0.25, "cuda-fp16"),  # Turing: no bf16, fp16 with loss scaling
    "A10G": GpuSpec(24, 70, 0.35),
    "L4": GpuSpec(24, 121, 0.30),
    "L40S": GpuSpec(48, 362, 0.35),
    "A100": GpuSpec(80, 312, 0.40),
    "H200": GpuSpec(141, 989, 0.35),
    "RTX PRO 6000": GpuSpec(96, 500, 0.35),
}
CPU_TFLOPS_PER_VCPU = 0.05
"""Effective fp32 training throughput of one vCPU (AVX2/AVX-512 matmuls, utilisation included)."""


class Flavor(BaseModel):
    """One hardware flavor a job can run on."""

    name: str
    pretty_name: str
    vcpus: int | None = None
    ram_gb: float | None = None
    gpu_model: str | None = Field(
        default=None, description="Accelerator model (a GPU_SPECS key); None on CPU."
    )
    gpu_count: int = 0
    gpu_memory_gb: float = Field(default=0.0, description="Memory of ONE GPU.")
    price_per_hour: float | None = Field(
        default=None, description="USD per hour; None when unknown."
    )

    @property
    def is_gpu(self) -> bool:
        return self.gpu_count > 0

    @property
    def spec(self) -> GpuSpec:
        """Its GPU's spec; an unknown model counts as a T4 (the slowest, fp16 only)."""
        return GPU_SPECS.get(
            self.gpu_model or "", GpuSpec(self.gpu_memory_gb, 65, 0.25, "cuda-fp16")
        )

    @property
    def device(self) -> str:
        """The row of training/train.py's PRECISION table the script uses on this flavor."""
        return self.spec.device if self.is_gpu else "cpu"

    @property
    def effective_tflops(self) -> float:
        """Training throughput this flavor sustains, in TFLOP/s.

        One GPU's: the training script is one process on one GPU, so the estimator never picks
        a flavor with more (docs/costs.md, "One GPU per job").
        """
        if not self.is_gpu:
            return (self.vcpus or 1) * CPU_TFLOPS_PER_VCPU
        return self.spec.peak_tflops * self.spec.utilisation

    @property
    def memory_per_device_gb(self) -> float:
        """Memory the training process can fill on one device (a GPU, or RAM on CPU)."""
        return self.gpu_memory_gb if self.is_gpu else (self.ram_gb or 0.0)


def _gpu(
    name: str, pretty: str, model: str, count: int, price: float | None, vcpus=None, ram=None
) -> Flavor:
    return Flavor(
        name=name,
        pretty_name=pretty,
        vcpus=vcpus,
        ram_gb=ram,
        gpu_model=model,
        gpu_count=count,
        gpu_memory_gb=GPU_SPECS[model].memory_gb,
        price_per_hour=price,
    )


OFFLINE_FLAVORS: list[Flavor] = [
    Flavor(name="cpu-basic", pretty_name="CPU Basic", vcpus=2, ram_gb=16, price_per_hour=0.01),
    Flavor(name="cpu-upgrade", pretty_name="CPU Upgrade", vcpus=8, ram_gb=32, price_per_hour=0.03),
    Flavor(name="cpu-xl", pretty_name="CPU XL", vcpus=16, ram_gb=124, price_per_hour=1.00),
    Flavor(
        name="cpu-performance",
        pretty_name="CPU Performance",
        vcpus=32,
        ram_gb=256,
        price_per_hour=1.90,
    ),
    _gpu("t4-small", "Nvidia T4 - small", "T4", 1, 0.40, 4, 15),
    _gpu("t4-medium", "Nvidia T4 - medium", "T4", 1, 0.60, 8, 30),
    _gpu("l4x1", "1x Nvidia L4", "L4", 1, 0.80, 8, 30),
    _gpu("l4x4", "4x Nvidia L4", "L4", 4, 3.80, 48, 186),
    _gpu("l40sx1", "1x Nvidia L40S", "L40S", 1, 1.80, 8, 62),
    _gpu("l40sx4", "4x Nvidia L40S", "L40S", 4, 8.30, 48, 382),
    _gpu("l40sx8", "8x Nvidia L40S", "L40S", 8, 23.50, 192, 1534),
    _gpu("a10g-small", "Nvidia A10G - small", "A10G", 1, 1.00, 4, 15),
    _gpu("a10g-large", "Nvidia A10G - large", "A10G", 1, 1.50, 12, 46),
    _gpu("a10g-largex2", "2x Nvidia A10G - large", "A10G", 2, 3.00, 24, 92),
    _gpu("a10g-largex4", "4x Nvidia A10G - large", "A10G", 4, 5.00, 48, 184),
    _gpu("a100-large", "Nvidia A100 - large", "A100", 1, 2.50, 12, 142),
    _gpu("a100x4", "4x Nvidia A100", "A100", 4, 10.00),
    _gpu("a100x8", "8x Nvidia A100", "A100", 8, 20.00),
    _gpu("h200", "Nvidia H200", "H200", 1, 5.00),
    _gpu("h200x2", "2x Nvidia H200", "H200", 2, 10.00),
    _gpu("h200x4", "4x Nvidia H200", "H200", 4, 20.00),
    _gpu("h200x8", "8x Nvidia H200", "H200", 8, 40.00),
    # Listed in huggingface_hub's JobHardware; their price was not published when the table
    # was dated, so they are only chosen when the live catalog gives one.
    _gpu("rtx-pro-6000", "1x Nvidia RTX PRO 6000", "RTX PRO 6000", 1, None),
    _gpu("rtx-pro-6000x2", "2x Nvidia RTX PRO 6000", "RTX PRO 6000", 2, None),
    _gpu("rtx-pro-6000x4", "4x Nvidia RTX PRO 6000", "RTX PRO 6000", 4, None),
    _gpu("rtx-pro-6000x8", "8x Nvidia RTX PRO 6000", "RTX PRO 6000", 8, None),
]


class UnknownFlavor(ValueError):
    """The requested hardware is not a flavor of the catalog; the message lists the valid ones."""


class HardwareCatalog(BaseModel):
    """The flavors jobs can run on, with where their prices came from."""

    flavors: list[Flavor]
    source: str
    as_of: datetime

    def get(self, name: str) -> Flavor:
        for flavor in self.flavors:
            if flavor.name == name:
                return flavor
        raise UnknownFlavor(
            f"hardware: {name!r} is not an HF Jobs flavor; use 'auto' or one of: "
            + ", ".join(f.name for f in self.flavors)
        )

    def describe(self) -> str:
        return f"{self.source} (as of {self.as_of:%Y-%m-%d %H:%M} UTC)"


def offline_catalog(reason: str | None = None) -> HardwareCatalog:
    """The dated table kept in the repo."""
    source = (
        OFFLINE_SOURCE
        if reason is None
        else f"{OFFLINE_SOURCE}; live catalog unavailable: {reason}"
    )
    as_of = datetime(
        OFFLINE_PRICES_AS_OF.year, OFFLINE_PRICES_AS_OF.month, OFFLINE_PRICES_AS_OF.day, tzinfo=UTC
    )
    return HardwareCatalog(
        flavors=[f.model_copy() for f in OFFLINE_FLAVORS], source=source, as_of=as_of
    )


_PER_HOUR = {"second": 3600, "minute": 60, "hour": 1}


def flavor_from_hardware_info(info) -> Flavor:
    """A `Flavor` from one `huggingface_hub.JobHardwareInfo`."""
    accelerator = info.accelerator
    count = int(accelerator.quantity) if accelerator else 0
    model = accelerator.model if accelerator else None
    if model is not None and model not in GPU_SPECS:
        model = next(
            (
                known
                for known in GPU_SPECS
                if known.replace(" ", "").lower() in model.replace(" ", "").lower()
            ),
            model,
        )
    per_gpu = 0.0
    if accelerator:
        # JobAccelerator.vram is documented as "total VRAM" but the Hub has shown per-GPU
        # figures too; the per-GPU memory of a known model is unambiguous, so prefer it.
        total = _gigabytes(accelerator.vram)
        per_gpu = GPU_SPECS[model].memory_gb if model in GPU_SPECS else total / max(count, 1)
    unit = _PER_HOUR.get((info.unit_label or "").lower().rstrip("s"))
    price = info.unit_cost_usd * unit if unit and info.unit_cost_usd is not None else None
    return Flavor(
        name=info.name,
        pretty_name=info.pretty_name,
        vcpus=_leading_int(info.cpu),
        ram_gb=_gigabytes(info.ram),
        gpu_model=model,
        gpu_count=count,
        gpu_memory_gb=per_gpu,
        price_per_hour=price,
    )


def _gigabytes(text: str | None) -> float:
    number = _leading_int(text)
    return float(number) if number is not None else 0.0


def _leading_int(text: str | None) -> int | None:
    digits = "".join(c for c in (text or "").split(" ")[0] if c.isdigit() or c == ".")
    return int(float(digits)) if digits else None


def _cache_path():
    path = lmft_home() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path / "jobs-hardware.json"


def load_catalog(
    *, api: HfApi | None = None, live: bool = True, ttl_seconds: int = CATALOG_TTL_SECONDS
) -> HardwareCatalog:
    """Flavors and prices: the cached live catalog, a fresh live one, or the offline table.

    Args:
        api: the client to ask (`HfApi(endpoint=...)` in tests); default the run's `hub_api()`.
        live: False to use the offline table without asking the Hub.
        ttl_seconds: how long a fetched catalog is reused.
    """
    if not live or (api is None and is_offline_mode()):
        return offline_catalog(None if not live else "HF_HUB_OFFLINE is set")
    if api is None:
        from blocks.huggingface import hub_api

        api = hub_api()
    cache = _cache_path()
    now = datetime.now(UTC)
    if cache.exists():
        try:
            cached = HardwareCatalog.model_validate_json(cache.read_text())
            if (
                cached.source.endswith(api.endpoint)
                and (now - cached.as_of).total_seconds() < ttl_seconds
            ):
                return cached
        except ValueError:
            logger.warning("ignoring unreadable hardware cache %s", cache)
    try:
        infos = api.list_jobs_hardware()
    except Exception as exc:  # any network/HTTP failure: fall back to the dated table, and say why
        return offline_catalog(f"{type(exc).__name__}: {str(exc)[:200]}")
    flavors = [flavor_from_hardware_info(info) for info in infos]
    catalog = HardwareCatalog(
        flavors=flavors, source=f"live list_jobs_hardware() from {api.endpoint}", as_of=now
    )
    staging = cache.with_suffix(".partial")
    staging.write_text(json.dumps(catalog.model_dump(mode="json"), indent=1))
    staging.replace(cache)
    return catalog
