# /// script
# requires-python = ">=3.11"
# dependencies = [
#     "torch==2.13.0",
#     "transformers>=4.57",
#     "trl>=0.24",
#     "peft>=0.17",
#     "datasets>=4",
#     "trackio>=0.43",
#     "huggingface_hub>=1.0",
# ]
# ///
"""Fine-tune a causal language model with TRL; the job script of lm-fine-tuning.

It imports nothing from the rest of the repository: the `local` backend runs it as a
subprocess and the `hf-jobs` backend ships it with `HfApi.run_uv_job`.

    python training/train.py --model_name_or_path ./smollm2 --dataset_path data.jsonl \
        --method sft --output_dir out --max_steps 30

    uv run training/train.py --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
        --dataset_path trl-lib/Capybara --method sft --output_dir out --push_to_hub_repo me/model

Every `--logging_steps` it prints one machine-readable progress line:

    LMFT_PROGRESS {"step": 3, "total_steps": 30, "loss": 2.41, "learning_rate": 0.0002, "eta_seconds": 81.0, ...}

and, when the merged model is saved, one result line:

    LMFT_RESULT {"output_dir": "...", "global_step": 30, "first_loss": ..., "final_loss": ..., ...}
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field

PROGRESS_PREFIX = "LMFT_PROGRESS "
RESULT_PREFIX = "LMFT_RESULT "


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(metadata={"help": "Hub model id or local checkpoint folder."})
    dataset_path: str = field(metadata={"help": "Local data file/folder or Hub dataset id."})
    output_dir: str = field(metadata={"help": "Where the merged model and tokenizer are saved."})
    method: str = field(default="sft", metadata={"help": "sft | dpo | grpo | kto"})
    dataset_config: str | None = field(
        default=None, metadata={"help": "Hub dataset configuration."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub dataset revision."})
    column_map: str = field(
        default="{}", metadata={"help": "JSON object renaming dataset columns."}
    )
    use_lora: bool = field(default=True, metadata={"help": "Train a LoRA adapter, then merge it."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "'all-linear' or a,b,c."}
    )
    num_train_epochs: float = field(
        default=1.0, metadata={"help": "Epochs (ignored when max_steps > 0)."}
    )
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; -1 means use epochs."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Batch size."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Gradient accumulation."})
    max_length: int = field(default=1024, metadata={"help": "Maximum tokenised length."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Warm-up fraction."})
    seed: int = field(default=42, metadata={"help": "Random seed."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Trade compute for memory."}
    )
    beta: float = field(default=0.1, metadata={"help": "DPO/KTO/GRPO KL coefficient."})
    num_generations: int = field(default=4, metadata={"help": "GRPO completions per prompt."})
    max_completion_length: int = field(default=64, metadata={"help": "GRPO generation length."})
    reward_functions: str = field(
        default="length", metadata={"help": "GRPO rewards: length,format,no_repetition."}
    )
    logging_steps: int = field(default=1, metadata={"help": "Print progress every N steps."})
    trackio_project: str = field(
        default="lm-fine-tuning", metadata={"help": "Trackio project name."}
    )
    trackio_space_id: str | None = field(
        default=None, metadata={"help": "Trackio Space to sync to."}
    )
    run_name: str | None = field(default=None, metadata={"help": "Run name shown in Trackio."})
    push_to_hub_repo: str | None = field(
        default=None, metadata={"help": "Push the merged model here."}
    )
    hub_private: bool = field(default=True, metadata={"help": "Create the Hub repo as private."})


# --- GRPO reward functions, selectable by name -------------------------------------------


def _completion_text(completion) -> str:
    if isinstance(completion, list):  # conversational: a list of messages
        return " ".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def length_reward(completions, **kwargs) -> list[float]:
    """Prefer answers of 20-200 characters; 1.0 inside the band, falling off outside."""
    rewards = []
    for completion in completions:
        n = len(_completion_text(completion).strip())
        rewards.append(
            1.0 if 20 <= n <= 200 else max(0.0, 1.0 - abs(n - (20 if n < 20 else 200)) / 200)
        )
    return rewards


def format_reward(completions, **kwargs) -> list[float]:
    """1.0 when the answer is one or more complete sentences (ends with . ! or ?)."""
    return [
        1.0 if re.search(r"[.!?][\"')\]]?\s*$", _completion_text(c)) else 0.0 for c in completions
    ]


def no_repetition_reward(completions, **kwargs) -> list[float]:
    """Share of distinct word trigrams: 1.0 means no repeated trigram."""
    rewards = []
    for completion in completions:
        words = _completion_text(completion).split()
        grams = [tuple(words[i : i + 3]) for i in range(max(0, len(words) - 2))]
        rewards.append(len(set(grams)) / len(grams) if grams else 0.0)
    return rewards


REWARD_FUNCTIONS = {
    "length": length_reward,
    "format": format_reward,
    "no_repetition": no_repetition_reward,
}


# --- data -----------------------------------------------------------------------------------


def _local_format(path: str) -> str:
    name = path[:-3] if path.endswith(".gz") else path
    ext = name.rsplit(".", 1)[-1]
    return {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}[ext]


SHAREGPT_ROLES = {
    "human": "user",
    "gpt": "assistant",
    "function_call": "assistant",
    "observation": "tool",
}


def _sharegpt_turn(turn: dict) -> dict:
    """A ShareGPT turn ({from, value}) as a chat message ({role, content}); others unchanged."""
    if "from" not in turn and "value" not in turn:
        return turn
    role = turn.get("from") or turn.get("role")
    return {
        "role": SHAREGPT_ROLES.get(role, role),
        "content": turn.get("value", turn.get("content")),
    }


def load_training_dataset(args: ScriptArguments):
    """Load the dataset (local files or the Hub) and apply the column map."""
    from datasets import load_dataset

    path = args.dataset_path
    if os.path.exists(path):
        if os.path.isdir(path):
            files = sorted(
                os.path.join(root, f)
                for root, _, names in os.walk(path)
                for f in names
                if re.search(r"\.(jsonl|json|csv|parquet)(\.gz)?$", f)
            )
            if not files:
                raise SystemExit(f"error: no jsonl/json/csv/parquet files under {path}")
        else:
            files = [path]
        dataset = load_dataset(_local_format(files[0]), data_files=files, split="train")
    else:
        dataset = load_dataset(
            path, args.dataset_config, split=args.dataset_split, revision=args.dataset_revision
        )
    column_map = json.loads(args.column_map or "{}")
    if column_map:
        dataset = dataset.rename_columns(
            {k: v for k, v in column_map.items() if k in dataset.column_names}
        )
    if column_map.get("conversations") == "messages":
        dataset = dataset.map(
            lambda row: {"messages": [_sharegpt_turn(t) for t in row["messages"]]}
        )
    if args.method == "kto" and "label" in dataset.column_names:
        dataset = dataset.map(lambda row: {"label": bool(row["label"])})
    return dataset


# --- progress -------------------------------------------------------------------------------


def _progress_callback():
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Prints one `LMFT_PROGRESS {json}` line per logging step, for the pipeline's monitor."""

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.first_loss: float | None = None
            self.last_loss: float | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            loss = logs.get("loss", logs.get("train_loss"))
            if loss is None or "train_runtime" in logs:
                return
            if self.first_loss is None:
                self.first_loss = float(loss)
            self.last_loss = float(loss)
            elapsed = time.monotonic() - self.started
            step, total = state.global_step, state.max_steps
            eta = elapsed / step * (total - step) if step else None
            line = {
                "step": step,
                "total_steps": total,
                "epoch": round(float(state.epoch or 0), 4),
                "loss": float(loss),
                "learning_rate": float(logs.get("learning_rate", 0.0)),
                "elapsed_seconds": round(elapsed, 2),
                "eta_seconds": None if eta is None else round(eta, 2),
            }
            for key in (
                "rewards/mean",
                "reward",
                "rewards/chosen",
                "rewards/accuracies",
                "grad_norm",
            ):
                if key in logs:
                    line[key.replace("/", "_")] = float(logs[key])
            print(PROGRESS_PREFIX + json.dumps(line), flush=True)

    return ProgressCallback()


# --- training -------------------------------------------------------------------------------


def _trainer_for(args: ScriptArguments, common: dict):
    """The TRL config and trainer class for the method."""
    import trl

    if args.method == "sft":
        return trl.SFTConfig(max_length=args.max_length, **common), trl.SFTTrainer
    if args.method == "dpo":
        return trl.DPOConfig(max_length=args.max_length, beta=args.beta, **common), trl.DPOTrainer
    if args.method == "kto":
        try:
            from trl import KTOConfig, KTOTrainer
        except ImportError:  # newer TRL keeps KTO under trl.experimental
            from trl.experimental.kto import KTOConfig, KTOTrainer
        return KTOConfig(max_length=args.max_length, beta=args.beta, **common), KTOTrainer
    if args.method == "grpo":
        config = trl.GRPOConfig(
            beta=args.beta,
            num_generations=args.num_generations,
            max_completion_length=args.max_completion_length,
            **common,
        )
        return config, trl.GRPOTrainer
    raise SystemExit(f"error: unknown method {args.method!r}; use sft, dpo, grpo or kto")


def save_atomically(target: str, *savers) -> None:
    """Save into `target` only once everything is written: into a sibling folder, then rename.

    A full disk (or a kill) mid-save leaves no `target` that passes for a finished model: the
    partial folder is removed and the error says where the disk is full.
    """
    import errno
    import shutil

    partial = f"{target}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for save in savers:
            save(partial)
        for root, _, files in os.walk(partial):  # on disk before the rename makes it visible
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    os.fsync(f.fileno())
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        if full or "No space left on device" in str(exc):  # safetensors raises its own error
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(target))).free
            raise SystemExit(
                f"error: the disk holding {os.path.dirname(os.path.abspath(target))} is full "
                f"({free / 1e6:.0f} MB free) while saving {target}; nothing was kept. Free space "
                "there, or give --output_dir on a bigger disk, and run again"
            ) from exc
        raise
    if os.path.isdir(target):  # a previous save of this output folder
        shutil.rmtree(target)
    os.replace(partial, target)


def main(args: ScriptArguments) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("TRACKIO_PROJECT", args.trackio_project)
    if args.trackio_space_id:
        os.environ.setdefault("TRACKIO_SPACE_ID", args.trackio_space_id)
    os.makedirs(args.output_dir, exist_ok=True)

    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, dtype=torch.float32)
    dataset = load_training_dataset(args)

    common = dict(
        output_dir=os.path.join(args.output_dir, "checkpoints"),
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        warmup_steps=args.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing,
        logging_steps=args.logging_steps,
        save_strategy="no",
        report_to=["trackio"],
        run_name=args.run_name,
        project=args.trackio_project,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    config, trainer_cls = _trainer_for(args, common)
    peft_config = None
    if args.use_lora:
        targets = args.lora_target_modules
        peft_config = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=targets if targets == "all-linear" else targets.split(","),
            task_type="CAUSAL_LM",
        )
    kwargs = dict(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if args.method == "grpo":
        kwargs["reward_funcs"] = [
            REWARD_FUNCTIONS[name] for name in args.reward_functions.split(",")
        ]
    progress = _progress_callback()
    trainer = trainer_cls(**kwargs, callbacks=[progress])
    started = time.monotonic()
    train_output = trainer.train()
    train_seconds = time.monotonic() - started

    model = trainer.model
    if args.use_lora:
        adapter_dir = os.path.join(args.output_dir, "adapter")
        save_atomically(adapter_dir, model.save_pretrained)
        model = model.merge_and_unload()
    model_dir = os.path.join(args.output_dir, "model")
    save_atomically(model_dir, model.save_pretrained, tokenizer.save_pretrained)
    result = {
        "output_dir": os.path.abspath(args.output_dir),
        "model_dir": os.path.abspath(model_dir),
        "adapter_dir": os.path.abspath(os.path.join(args.output_dir, "adapter"))
        if args.use_lora
        else None,
        "global_step": int(train_output.global_step),
        "first_loss": progress.first_loss,
        "final_loss": progress.last_loss,
        "train_loss": float(train_output.training_loss),
        "train_seconds": round(train_seconds, 2),
        "trackio_project": args.trackio_project,
        "hub_repo": None,
        "hub_revision": None,
    }
    if args.push_to_hub_repo:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(args.push_to_hub_repo, private=args.hub_private, exist_ok=True)
        info = api.upload_folder(
            repo_id=args.push_to_hub_repo,
            folder_path=model_dir,
            commit_message="lm-fine-tuning: merged model",
        )
        if args.use_lora:
            api.upload_folder(
                repo_id=args.push_to_hub_repo,
                folder_path=result["adapter_dir"],
                path_in_repo="adapter",
                commit_message="lm-fine-tuning: LoRA adapter",
            )
            info = api.list_repo_commits(args.push_to_hub_repo)[0]
            result["hub_revision"] = info.commit_id
        else:
            result["hub_revision"] = info.oid
        result["hub_repo"] = args.push_to_hub_repo
    result_path = os.path.join(args.output_dir, "result.json")
    with open(result_path + ".partial", "w") as f:
        json.dump(result, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(result_path + ".partial", result_path)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    from transformers import HfArgumentParser

    (script_args,) = HfArgumentParser(ScriptArguments).parse_args_into_dataclasses()
    if script_args.method not in ("sft", "dpo", "grpo", "kto"):
        sys.exit(f"error: --method must be sft, dpo, grpo or kto, not {script_args.method!r}")
    print("LMFT_ARGS " + json.dumps(asdict(script_args)), flush=True)
    main(script_args)
