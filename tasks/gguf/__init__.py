"""GGUF conversion with llama.cpp's own converter, quantization, and a quality gate."""

from schemas.gguf import (
    ConversionResult,
    GGUFArtifacts,
    GGUFLineage,
    GGUFSettings,
    GGUFVariant,
    HubTarget,
    QualityReport,
    QuantType,
)
from tasks.gguf.convert import (
    ConversionPlan,
    compute_imatrix,
    convert_to_gguf,
    preflight_gguf,
    quantize_gguf,
)
from tasks.gguf.converter import Converter, ConverterError, fetch_converter
from tasks.gguf.held_out import select_held_out
from tasks.gguf.lineage import hash_dataset, lineage_for_request, read_metadata
from tasks.gguf.preflight import PreflightError
from tasks.gguf.publish import HubCredentialsMissing, resolve_token, upload_gguf
from tasks.gguf.quality import check_gguf_quality
from tasks.gguf.quantize import QuantizationError

__all__ = [
    "ConversionPlan",
    "ConversionResult",
    "Converter",
    "ConverterError",
    "GGUFArtifacts",
    "GGUFLineage",
    "GGUFSettings",
    "GGUFVariant",
    "HubCredentialsMissing",
    "HubTarget",
    "PreflightError",
    "QualityReport",
    "QuantType",
    "QuantizationError",
    "check_gguf_quality",
    "compute_imatrix",
    "convert_to_gguf",
    "fetch_converter",
    "hash_dataset",
    "lineage_for_request",
    "preflight_gguf",
    "quantize_gguf",
    "read_metadata",
    "resolve_token",
    "select_held_out",
    "upload_gguf",
]
