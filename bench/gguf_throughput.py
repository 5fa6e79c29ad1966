"""GGUF conversion and quantization throughput beside a plain copy of the same bytes.

    python -m bench.gguf_throughput                      # the embedded SmolLM2-135M-Instruct
    python -m bench.gguf_throughput path/to/hf-model     # any Hugging Face model folder

Every figure is source bytes per second (MB/s), measured on the same disk in one run:
the safetensors → f16 conversion (llama.cpp's converter, as a subprocess, interpreter
start-up included) against `shutil.copyfile` of the safetensors, and each quantization
(llama.cpp library) against a copy of the f16 GGUF.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path


def _timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main(model: str | None = None) -> None:
    from tasks.gguf import QuantType, fetch_converter
    from tasks.gguf.converter import run_converter
    from tasks.gguf.quantize import quantize_file
    from tasks.jobs.base_model import materialize_embedded_model
    from tasks.paths import lmft_home

    model_dir = Path(model) if model else materialize_embedded_model()
    converter = fetch_converter()
    weights = sorted(model_dir.glob("*.safetensors"))
    source_bytes = sum(p.stat().st_size for p in weights)
    rows: list[tuple[str, int, float, float]] = []
    with tempfile.TemporaryDirectory(dir=lmft_home(), prefix="bench-gguf-") as scratch:
        out = Path(scratch)
        copy_s = _timed(lambda: [shutil.copyfile(p, out / f"copy-{p.name}") for p in weights])
        f16 = out / "model-F16.gguf"
        convert_s = _timed(lambda: run_converter(converter, model_dir, f16, outtype="f16"))
        rows.append(("convert safetensors → F16", source_bytes, convert_s, copy_s))
        f16_bytes = f16.stat().st_size
        copy_f16_s = _timed(lambda: shutil.copyfile(f16, out / "copy-F16.gguf"))
        for quant in (QuantType.Q8_0, QuantType.Q4_K_M):
            seconds = _timed(
                lambda q=quant: quantize_file(f16, out / f"model-{q.value}.gguf", q, metadata={})
            )
            rows.append((f"quantize F16 → {quant.value}", f16_bytes, seconds, copy_f16_s))

    print(
        f"\nGGUF throughput: {model_dir.name} (llama.cpp converter from llama-cpp-python {converter.version})"
    )
    print(f"{'step':<28} {'MB':>8} {'step MB/s':>10} {'copy MB/s':>10} {'copy/step':>10}")
    for name, size, seconds, copy_seconds in rows:
        step_rate, copy_rate = size / seconds / 1e6, size / copy_seconds / 1e6
        print(
            f"{name:<28} {size / 1e6:8.1f} {step_rate:10.1f} {copy_rate:10.1f} {copy_rate / step_rate:9.1f}x"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
