"""Cost estimation: the hardware catalog, model size, memory fit, time and money.

The public surface is re-exported here; the modules behind it are `catalog`, `model_size`,
`workload` (memory and FLOPs) and `estimate`.
"""

from schemas.costs import (
    CostEstimate,
    FlavorQuote,
    MemoryBreakdown,
    cost_of_running,
    cost_so_far,
)
from tasks.costs.catalog import (
    Flavor,
    HardwareCatalog,
    UnknownFlavor,
    load_catalog,
    offline_catalog,
)
from tasks.costs.estimate import (
    EstimateRefused,
    HardwareDoesNotFit,
    estimate_cost,
    estimate_request,
    estimate_workload,
    free_estimate,
    workload_from_request,
)
from tasks.costs.model_size import (
    ModelShape,
    ModelSizeUnavailable,
    read_model_shape,
    shape_from_config,
)
from tasks.costs.workload import TrainingMode, Workload, memory_needed

__all__ = [
    "CostEstimate",
    "EstimateRefused",
    "Flavor",
    "FlavorQuote",
    "HardwareCatalog",
    "HardwareDoesNotFit",
    "MemoryBreakdown",
    "ModelShape",
    "ModelSizeUnavailable",
    "TrainingMode",
    "UnknownFlavor",
    "Workload",
    "cost_of_running",
    "cost_so_far",
    "estimate_cost",
    "estimate_request",
    "estimate_workload",
    "free_estimate",
    "load_catalog",
    "memory_needed",
    "offline_catalog",
    "read_model_shape",
    "shape_from_config",
    "workload_from_request",
]
