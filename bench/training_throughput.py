"""Benchmark: tokens/s and padding of the pirate example with packing and answer-only loss off/on,
and the pipeline's training step next to the same TRL configuration run bare.

    python -m bench.training_throughput                 # one epoch of examples/pirate_chat.jsonl
    python -m bench.training_throughput --hidden 128    # a wider tiny model

On this machine's CPU, with a random-initialised tiny llama from `tests/tiny_models.py` (SmolLM2's
real tokenizer and chat template, no download), the pirate example's 184 conversations,
max_length 256 and batch 4 (examples/pirate_sft.yaml):

  1. one epoch through `training/train.py`'s `main` for each of packing off/on × loss on all
     tokens / on the answers: real tokens per second, the padded-token share, the tokens trained
     on, the optimizer steps (the figures its LMFT_PROGRESS lines carry);
  2. the overhead: `max_steps` steps of the pipeline's `main` (its callbacks, token meter,
     Trackio, precision) next to `trl.SFTTrainer` built with the same SFTConfig values on the same
     rows, with no callbacks and no reporting; the best of `--repeats` runs of each, ratio
     pipeline / bare (the target is at most 1.05).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PIRATE = ROOT / "examples" / "pirate_chat.jsonl"


def script_arguments(model: Path, output: Path, **overrides):
    from transformers import HfArgumentParser

    from training import train as train_script

    values = {
        "model_name_or_path": model, "dataset_path": PIRATE, "output_dir": output,
        "max_length": 256, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
        "eval_ratio": 0, "save_steps": 10**6, "save_minutes": 0, "logging_steps": 1,
        "run_name": "bench", **overrides,
    }  # fmt: skip
    argv = [item for k, v in values.items() for item in (f"--{k}", str(v))]
    (args,) = HfArgumentParser(train_script.ScriptArguments).parse_args_into_dataclasses(argv)
    return args


def quiet_main(args) -> dict:
    """train.py's main, its progress lines kept off the terminal."""
    from training import train as train_script

    with contextlib.redirect_stdout(io.StringIO()):
        return train_script.main(args)


def variants(model: Path, root: Path) -> None:
    quiet_main(script_arguments(model, root / "warm-up", max_steps=3))  # imports, Trackio, caches
    print(
        "| packing | loss on | steps | tokens/s (real) | padded share | tokens seen | tokens trained | train s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for packing in ("false", "true"):
        for loss_on in ("all", "answers"):
            result = quiet_main(
                script_arguments(
                    model,
                    root / f"{packing}-{loss_on}",
                    packing=packing,
                    loss_on=loss_on,
                    num_train_epochs=1,
                )  # fmt: skip
            )
            print(
                f"| {packing} | {loss_on} | {result['global_step']} | {result['tokens_per_second']:.0f} "
                f"| {result['padded_share']:.1%} | {result['tokens_seen']:,} "
                f"| {result['tokens_trained']:,} | {result['train_seconds']:.1f} |",
                flush=True,
            )


def bare_seconds(model: Path, output: Path, steps: int) -> float:
    """`trl.SFTTrainer` with the pipeline's SFTConfig values, no callbacks, no reporting."""
    import torch
    import trl
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    config = trl.SFTConfig(
        output_dir=str(output), max_steps=steps, learning_rate=1e-3, per_device_train_batch_size=4,
        max_length=256, warmup_steps=0.03, seed=42, logging_steps=1, save_strategy="no",
        report_to=[], disable_tqdm=True, use_cpu=True, packing=False, gradient_checkpointing=False,
        completion_only_loss=False, assistant_only_loss=False,
    )  # fmt: skip
    trainer = trl.SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(
            model, dtype=torch.float32, attn_implementation="sdpa"
        ),
        args=config,
        train_dataset=load_dataset("json", data_files=str(PIRATE), split="train"),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.05,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),  # fmt: skip
    )
    started = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer's own log lines
        trainer.train()
    return time.monotonic() - started


def overhead(model: Path, root: Path, steps: int, repeats: int) -> None:
    pipeline, bare = [], []
    for i in range(repeats):
        bare.append(bare_seconds(model, root / f"bare-{i}", steps))
        args = script_arguments(
            model, root / f"pipeline-{i}", max_steps=steps, packing="false", loss_on="all"
        )
        pipeline.append(quiet_main(args)["train_seconds"])
    print(
        f"\n{steps} steps (packing off, loss on all tokens), best of {repeats}: pipeline "
        f"{min(pipeline):.2f} s, bare TRL {min(bare):.2f} s, overhead ratio "
        f"{min(pipeline) / min(bare):.3f} (all runs: pipeline {[round(s, 2) for s in pipeline]}, "
        f"bare {[round(s, 2) for s in bare]})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=64, help="tiny llama hidden size")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="steps of the overhead comparison")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    os.environ.setdefault("TRACKIO_PROJECT", "lm-fine-tuning-bench")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    from tests.tiny_models import build_tiny_llama, save_tokenizer

    with tempfile.TemporaryDirectory(prefix="lmft-throughput-") as tmp:
        root = Path(tmp)
        os.environ.setdefault("TRACKIO_DIR", str(root / "trackio"))
        model = build_tiny_llama(
            root / "model", save_tokenizer(root / "tokenizer"), hidden_size=options.hidden,
            layers=options.layers,
        )  # fmt: skip
        print(f"tiny llama: hidden {options.hidden}, {options.layers} layers, SmolLM2 vocabulary; "
              f"{PIRATE.name}, max_length 256, batch 4, one epoch, {os.cpu_count()} CPU cores\n")  # fmt: skip
        variants(model, root)
        overhead(model, root, options.steps, options.repeats)


if __name__ == "__main__":
    main()
