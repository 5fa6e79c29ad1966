"""Benchmark: what evaluation and checkpoints cost, and how fast a killed run resumes.

    python bench/training_eval.py                 # the pirate example (examples/pirate_sft.yaml)
    python bench/training_eval.py --max-steps 12  # a shorter run

Runs `training/train.py` on this machine's CPU with the arguments the pipeline gives it for
the pirate example (SmolLM2-135M-Instruct, LoRA, 30 steps), each in a fresh process:

  1. defaults: 5 % of the rows held out and evaluated on the base model, at every checkpoint
     (every 25 % of the run) and at the end; checkpoints every 25 % of the run;
  2. a new process resuming run 1 from its checkpoint before the last (`--resume_from_checkpoint`),
     stopped at its first new step;
  3. bare: no evaluation, no checkpoint.

Prints the training seconds of 1 and 3, the evaluation seconds the trainer measured, the
overhead of evaluation + checkpoints as a share of the bare run, and the resume overhead:
seconds from the resumed process's start to its first new step, next to a fresh start's
seconds to its first step (loading Python, the model and the data is the same in both).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROGRESS = "LMFT_PROGRESS "
RESULT = "LMFT_RESULT "


def pirate_args(max_steps: int | None) -> list[str]:
    """train.py's arguments for the pirate example, as `submit_training` builds them."""
    import yaml

    from schemas.request import FineTuneRequest
    from tasks.jobs.base_model import prepare_base_model
    from tasks.jobs.training import training_script_args

    config_path = ROOT / "examples" / "pirate_sft.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["dataset"]["path"] = str(config_path.parent / config["dataset"]["path"])
    if max_steps:
        config["hyperparameters"]["max_steps"] = max_steps
    request = FineTuneRequest.model_validate(config)
    model = prepare_base_model.fn(request)  # the plain function: no Prefect server needed
    return training_script_args(request, model, run_name="bench")


class Run:
    """One train.py process; its progress lines with the seconds since it started."""

    def __init__(self, args: list[str], output: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.setdefault("TRACKIO_DIR", str(output / "trackio"))
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-u",
                str(ROOT / "training" / "train.py"),
                *args,
                "--output_dir",
                str(output),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.progress: list[tuple[float, dict]] = []
        self.result: dict | None = None

    def lines(self):
        for line in self.process.stdout:
            if line.startswith(PROGRESS):
                record = json.loads(line[len(PROGRESS) :])
                self.progress.append((time.monotonic() - self.started, record))
                yield record
            elif line.startswith(RESULT):
                self.result = json.loads(line[len(RESULT) :])

    def finish(self) -> Run:
        for _ in self.lines():
            pass
        if self.process.wait() != 0 or self.result is None:
            raise SystemExit(f"train.py failed with exit code {self.process.returncode}")
        return self

    def first_step_seconds(self) -> float:
        return next(t for t, p in self.progress if "loss" in p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=None, help="Override the example's 30.")
    options = parser.parse_args()
    args = pirate_args(options.max_steps)
    bare = ["--eval_ratio", "0", "--save_steps", "1000000", "--save_minutes", "0"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("1/3 defaults (evaluation + checkpoints) ...", flush=True)
        full = Run(args, work / "full").finish()
        evals = [p for _, p in full.progress if "eval_loss" in p]
        eval_seconds = sum(p.get("eval_seconds", 0.0) for p in evals)
        print(
            f"  {full.result['global_step']} steps in {full.result['train_seconds']:.1f} s, "
            f"{len(evals)} evaluations of the held-out rows: {eval_seconds:.1f} s; eval loss "
            f"base {full.result['base_eval_loss']:.4f} -> {full.result['eval_loss']:.4f} "
            f"(best step {full.result['best_step']})",
            flush=True,
        )
        print("2/3 resumed from the run's checkpoint before its last ...", flush=True)
        checkpoints = sorted(
            (work / "full" / "checkpoints").glob("checkpoint-*"),
            key=lambda p: int(p.name.rsplit("-", 1)[1]),
        )
        start = checkpoints[-2]  # an unfinished state: steps remain after it
        resumed = Run(args + ["--resume_from_checkpoint", str(start)], work / "resumed")
        for record in resumed.lines():
            if "loss" in record:  # the first new step: that is all this measures
                resumed.process.send_signal(signal.SIGKILL)
                break
        resumed.process.wait()
        print(
            f"  from {start.name}: first new step (step {record['step']}) "
            f"{resumed.first_step_seconds():.1f} s after the process started; a fresh start's "
            f"first step came {full.first_step_seconds():.1f} s after it",
            flush=True,
        )
        print("3/3 bare (no evaluation, no checkpoints) ...", flush=True)
        plain = Run(args + bare, work / "bare").finish()

    steps = full.result["global_step"]
    overhead = full.result["train_seconds"] - plain.result["train_seconds"]
    share = overhead / plain.result["train_seconds"]
    print()
    print(f"pirate example, {steps} steps, {len(evals)} evaluations of the held-out rows")
    print(f"  training with defaults   {full.result['train_seconds']:8.1f} s")
    print(f"  training bare            {plain.result['train_seconds']:8.1f} s")
    print(
        f"  evaluation (trainer)     {eval_seconds:8.1f} s  "
        f"({eval_seconds / plain.result['train_seconds']:.1%} of bare)"
    )
    print(f"  eval + checkpoints       {overhead:8.1f} s  ({share:.1%} of bare; target < 10 %)")
    print(f"resume from {start.name}")
    print(f"  first new step after     {resumed.first_step_seconds():8.1f} s from process start")
    print(f"  a fresh start's first    {full.first_step_seconds():8.1f} s from process start")
    print(
        f"  resume overhead          {resumed.first_step_seconds() - full.first_step_seconds():8.1f} s"
    )


if __name__ == "__main__":
    main()
