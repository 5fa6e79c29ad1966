"""Quantize a GGUF through the llama.cpp library (`llama_cpp.llama_model_quantize`)."""

from __future__ import annotations

import ctypes
import logging
import time
from pathlib import Path

import numpy as np

from schemas.gguf import GGUFVariant, QuantType
from tasks.gguf.converter import disk_full_message


class QuantizationError(RuntimeError):
    """llama.cpp refused to quantize; the message names the type and file."""


def llama_ftype(quant_type: QuantType) -> int:
    """The `llama_ftype` constant of a type name (`Q4_K_M` → `LLAMA_FTYPE_MOSTLY_Q4_K_M`)."""
    import llama_cpp

    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant_type.value}", None)
    if value is None:
        raise QuantizationError(f"this llama-cpp-python build has no file type {quant_type.value}")
    return value


def _kv_overrides(values: dict[str, str]):
    """A NUL-key-terminated `llama_model_kv_override` array, as llama.cpp reads it."""
    import llama_cpp

    array = (llama_cpp.llama_model_kv_override * (len(values) + 1))()
    for slot, (key, value) in zip(array, values.items(), strict=False):
        slot.key = key.encode()
        slot.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
        slot.value.val_str = value.encode()
    return array


def _imatrix(values: dict[str, np.ndarray]):
    """A NULL-name-terminated `llama_model_imatrix_data` array (and the buffers it points into)."""
    import llama_cpp

    buffers = [np.ascontiguousarray(v, dtype=np.float32) for v in values.values()]
    array = (llama_cpp.llama_model_imatrix_data * (len(values) + 1))()
    for slot, name, buffer in zip(array, values, buffers, strict=False):
        slot.name = name.encode()
        slot.data = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        slot.size = buffer.size
    return array, buffers


def quantize_file(
    source: Path,
    target: Path,
    quant_type: QuantType,
    *,
    metadata: dict[str, str],
    threads: int = 0,
    only_copy: bool = False,
    imatrix: dict[str, np.ndarray] | None = None,
) -> GGUFVariant:
    """Write `target` from `source` as `quant_type` (or as an exact copy) with `metadata` keys added."""
    import llama_cpp

    # llama.cpp logs one line per tensor through llama-cpp-python's logger; keep errors only.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_ftype(quant_type)
    params.nthread = threads
    params.only_copy = only_copy
    overrides = _kv_overrides(metadata)  # kept alive until the call returns
    params.kv_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    if quant_type.needs_importance_matrix and not only_copy:
        if not imatrix:
            raise QuantizationError(
                f"{quant_type.value} needs an importance matrix (compute one from training text)"
            )
        importance, _buffers = _imatrix(imatrix)  # both kept alive until the call returns
        params.imatrix = ctypes.cast(importance, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    partial = target.with_name(target.name + ".partial")
    started = time.monotonic()
    code = llama_cpp.llama_model_quantize(
        str(source).encode(), str(partial).encode(), ctypes.byref(params)
    )
    seconds = time.monotonic() - started
    if code != 0 or not partial.exists():
        full = disk_full_message(partial)
        partial.unlink(missing_ok=True)
        if full:
            raise QuantizationError(f"could not write {target.name}: {full}")
        raise QuantizationError(
            f"llama.cpp could not quantize {source.name} to {quant_type.value} (code {code}); see its log above"
        )
    partial.replace(target)
    return GGUFVariant(
        quant_type=quant_type,
        path=str(target),
        size_bytes=target.stat().st_size,
        seconds=round(seconds, 3),
    )
