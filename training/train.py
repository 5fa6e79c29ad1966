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

    LMFT_PROGRESS {"step": 3, "total_steps": 30, "loss": 2.41, "learning_rate": 0.0002, "eta_seconds": 81.0,
                   "tokens_per_second": 5120.0, "padded_share": 0.0, "tokens_seen": 12288, "tokens_trained": 6011, ...}

It trains in the dtypes of `PRECISION` (bf16 on GPUs that have it, fp16 with loss scaling on a T4,
fp32 on CPU; `--quantize 4bit`: QLoRA on an NF4 base, GPU only), with SDPA attention; SFT trains on
the answers only (`--loss_on answers`) and packs short rows padding-free (`--packing auto`).

After each evaluation (on the base model before training, every `--eval_steps`, at the last
step) the line carries `eval_loss` instead of `loss`. Checkpoints (`--save_steps`, at least every
`--save_minutes`, and on SIGTERM) go to `OUTPUT_DIR/checkpoints` and, with `--push_to_hub_repo`,
to that repository's `checkpoints/last/` folder, optimizer state included; `--resume_from_checkpoint`
continues from one. The loss watchdog stops a run whose loss is NaN/inf or diverges:

    LMFT_STOPPED {"reason": "watchdog: loss is nan at step 7", "step": 7, ...}

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
from typing import Any

PROGRESS_PREFIX = "LMFT_PROGRESS "
RESULT_PREFIX = "LMFT_RESULT "
STOPPED_PREFIX = "LMFT_STOPPED "
CHECKPOINT_PREFIX = "LMFT_CHECKPOINT "
HUB_CHECKPOINT_FOLDER = "checkpoints/last"
EXIT_TERMINATED = 143  # 128 + SIGTERM: a checkpoint was saved, the run can resume from it
EXIT_WATCHDOG = 3


# --- precision: one table, read by this script and by the cost estimator --------------------
# tasks/costs/workload.py imports PRECISION and BYTES_PER_VALUE, so the memory and time it
# predicts are those of what this script loads. Per device class and training mode:
#   weights:   dtype the base weights are loaded in ("nf4": bitsandbytes 4-bit NormalFloat with
#              double quantization; the layers it does not quantize stay in the compute dtype)
#   trainable: dtype of the trained parameters; their gradients and AdamW moments share it
#   autocast:  TrainingArguments mixed precision ("bf16", or "fp16" with loss scaling); None: off
PRECISION: dict[str, dict[str, dict[str, str | None]]] = {
    "cuda-bf16": {  # compute capability 8.0 and newer: A10G, L4, L40S, A100, H100, H200, RTX PRO 6000
        "full": {"weights": "float32", "trainable": "float32", "autocast": "bf16"},
        "lora": {"weights": "bfloat16", "trainable": "float32", "autocast": "bf16"},
        # TRL casts QLoRA adapters to bf16 (the QLoRA paper's recipe)
        "qlora": {"weights": "nf4", "trainable": "bfloat16", "autocast": "bf16"},
    },
    "cuda-fp16": {  # Turing (T4): no bf16 tensor cores; fp16 autocast, the gradients loss-scaled
        "full": {"weights": "float32", "trainable": "float32", "autocast": "fp16"},
        "lora": {"weights": "float16", "trainable": "float32", "autocast": "fp16"},
        "qlora": {"weights": "nf4", "trainable": "bfloat16", "autocast": "fp16"},
    },
    "cpu": {  # no QLoRA: bitsandbytes' 4-bit kernels need a CUDA GPU
        "full": {"weights": "float32", "trainable": "float32", "autocast": None},
        "lora": {"weights": "float32", "trainable": "float32", "autocast": None},
    },
}
BYTES_PER_VALUE: dict[str, float] = {
    "float32": 4.0,
    "bfloat16": 2.0,
    "float16": 2.0,
    # 4 bits, the double-quantised absmax constants, and the embeddings and lm_head, which
    # bitsandbytes leaves in 16 bits, averaged over a small model's parameters
    "nf4": 0.55,
}
ATTENTION = "sdpa"
"""attn_implementation asked of every model (PyTorch's fused scaled-dot-product attention)."""


def device_class() -> str:
    """The PRECISION row of this machine: cuda-bf16, cuda-fp16 (a GPU before Ampere) or cpu."""
    try:
        import torch
    except ImportError:
        return "cpu"
    if not torch.cuda.is_available():
        return "cpu"
    # Not torch.cuda.is_bf16_supported(): it reports emulated bf16 on a T4 as supported.
    return "cuda-bf16" if torch.cuda.get_device_capability(0)[0] >= 8 else "cuda-fp16"


def training_mode(args: ScriptArguments) -> str:
    """The PRECISION column: full, lora or qlora."""
    if not args.use_lora:
        return "full"
    return "qlora" if args.quantize == "4bit" else "lora"


def quantization_problem(quantize: str, *, use_lora: bool, device: str) -> str | None:
    """Why `quantize` cannot be honoured on `device` here (None: it can, or it was not asked).

    The worker's preflight asks it too, for a local run, before anything is reserved or trained.
    """
    if quantize == "none":
        return None
    if quantize != "4bit":
        return f"--quantize must be 'none' or '4bit', not {quantize!r}"
    if not use_lora:
        return "lora.quantize: 4bit trains a LoRA adapter on a 4-bit base (QLoRA); it needs lora.enabled"
    if "qlora" not in PRECISION[device]:
        return (
            "lora.quantize: 4bit (QLoRA) needs a CUDA GPU, and this machine has none: bitsandbytes' "
            "4-bit kernels do not run on CPU. Train on a GPU flavor (backend hf-jobs), or drop "
            "lora.quantize to train a plain LoRA adapter here"
        )
    import importlib

    try:  # imported here only: a run without QLoRA never needs it
        importlib.import_module("bitsandbytes")
    except Exception as exc:  # an ImportError, or the library failing to find its CUDA binary
        return (
            f"lora.quantize: 4bit (QLoRA) needs bitsandbytes, which cannot be loaded here "
            f"({type(exc).__name__}: {exc}); install it (pip install bitsandbytes) or drop lora.quantize"
        )
    return None


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
    quantize: str = field(
        default="none",
        metadata={
            "help": "none | 4bit: QLoRA, a LoRA adapter on a bitsandbytes NF4 base (CUDA only)."
        },
    )
    loss_on: str = field(
        default="answers",
        metadata={
            "help": "SFT: answers (assistant turns of conversations, completions of prompt-completion "
            "rows; a message with weight 0 is not trained on) | all (every token)."
        },
    )
    packing: str = field(
        default="auto",
        metadata={
            "help": "SFT: pack rows into max_length sequences, padding-free (true | false | auto: on "
            "for an epoch-based run whose rows are short next to max_length)."
        },
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
    eval_ratio: float = field(
        default=0.05,
        metadata={"help": "Share of the dataset held out for evaluation (0: none)."},
    )
    eval_max_rows: int = field(default=200, metadata={"help": "At most this many held-out rows."})
    eval_dataset_path: str | None = field(
        default=None, metadata={"help": "A separate evaluation dataset (then nothing is held out)."}
    )
    eval_dataset_config: str | None = field(default=None, metadata={"help": "Its Hub config."})
    eval_dataset_split: str = field(default="train", metadata={"help": "Its split."})
    eval_dataset_revision: str | None = field(default=None, metadata={"help": "Its revision."})
    eval_column_map: str | None = field(
        default=None, metadata={"help": "Its column map (default: --column_map)."}
    )
    eval_steps: int = field(
        default=0, metadata={"help": "Evaluate every N steps; 0: at every checkpoint."}
    )
    save_steps: float = field(
        default=0.25,
        metadata={"help": "Checkpoint every N steps, or this share of the run when below 1."},
    )
    save_minutes: float = field(
        default=20.0, metadata={"help": "Also checkpoint at least this often (0: off)."}
    )
    save_total_limit: int = field(
        default=2, metadata={"help": "Checkpoints kept (the best one is kept too)."}
    )
    early_stopping_patience: int = field(
        default=0, metadata={"help": "Stop after N evaluations without improvement (0: off)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "A checkpoint folder, a folder of checkpoint-N folders, or 'hub' for "
            "--push_to_hub_repo's checkpoints/last."
        },
    )
    warm_start_from: str | None = field(
        default=None,
        metadata={
            "help": "Start from this checkpoint's or adapter's LoRA weights with a new optimizer "
            "and schedule (continue a finished run); same forms as --resume_from_checkpoint."
        },
    )
    watchdog_factor: float = field(
        default=3.0,
        metadata={"help": "Diverged: loss above this multiple of its running minimum ..."},
    )
    watchdog_patience: int = field(
        default=3, metadata={"help": "... for this many logging steps in a row (0: off)."}
    )
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
        "role": SHAREGPT_ROLES.get(role, role) if isinstance(role, str) else role,
        "content": turn.get("value", turn.get("content")),
    }


def load_training_dataset(args: ScriptArguments):
    """Load the dataset (local files or the Hub) and apply the column map."""
    return _load_dataset(
        args,
        args.dataset_path,
        args.dataset_config,
        args.dataset_split,
        args.dataset_revision,
        args.column_map,
    )


def _load_dataset(args: ScriptArguments, path: str, config, split: str, revision, column_map: str):
    from datasets import load_dataset

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
        dataset = load_dataset(path, config, split=split, revision=revision)
    columns: dict[str, str] = json.loads(column_map or "{}")
    if columns:
        dataset = dataset.rename_columns(
            {k: v for k, v in columns.items() if k in dataset.column_names}
        )
    if columns.get("conversations") == "messages":
        dataset = dataset.map(
            lambda row: {"messages": [_sharegpt_turn(t) for t in row["messages"]]}
        )
    if args.method == "kto" and "label" in dataset.column_names:
        dataset = dataset.map(lambda row: {"label": bool(row["label"])})
    return dataset


# --- evaluation split -----------------------------------------------------------------------


def eval_row_count(total: int, ratio: float, max_rows: int) -> int:
    """Rows held out of `total`: `ratio` of them (at least 1), at most `max_rows`, leaving one to train.

    The worker's GGUF quality gate (tasks/gguf/held_out.py) imports it to read the same rows.
    """
    if ratio <= 0 or total < 2:
        return 0
    return min(max_rows, max(1, round(total * ratio)), total - 1)


def split_evaluation(args: ScriptArguments, dataset):
    """(train, eval): the separate eval dataset, or a held-out share chosen by the seed, or None."""
    if args.method == "grpo":  # GRPO has no eval loss to compare; its evaluation generates
        return dataset, None
    if args.eval_dataset_path:
        eval_set = _load_dataset(
            args,
            args.eval_dataset_path,
            args.eval_dataset_config,
            args.eval_dataset_split,
            args.eval_dataset_revision,
            args.column_map if args.eval_column_map is None else args.eval_column_map,
        )
        return dataset, eval_set
    n_eval = eval_row_count(len(dataset), args.eval_ratio, args.eval_max_rows)
    if n_eval == 0:
        return dataset, None
    # datasets' own split: a permutation from np.random.default_rng(seed), the first n_eval rows held out.
    parts = dataset.train_test_split(test_size=n_eval, shuffle=True, seed=args.seed)
    return parts["train"], parts["test"]


# --- SFT: where the loss goes, packing -------------------------------------------------------

GENERATION_TAGS = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")
"""`{% generation %}` / `{% endgeneration %}`: training-only template markers llama.cpp rejects."""
PACK_WHEN_MEAN_BELOW = 0.25
"""packing=auto packs an epoch-based run when its mean row is under this share of max_length."""
LENGTH_SAMPLE_ROWS = 256


class NotPrefixPreserving(ValueError):
    """The chat template renders earlier turns differently once a later turn follows."""


def without_generation_tags(template):
    """The chat template (a string, or a dict of named ones) without generation markers."""
    if isinstance(template, dict):
        return {name: without_generation_tags(t) for name, t in template.items()}
    return GENERATION_TAGS.sub("", template) if isinstance(template, str) else template


def _clean_messages(messages) -> list[dict]:
    # datasets fills keys a row lacks with None; `weight` is ours, not the template's
    return [{k: v for k, v in m.items() if v is not None and k != "weight"} for m in messages or []]


def answer_labels(row: dict, tokenizer) -> dict:
    """`input_ids` of a conversation and `labels` that train on its assistant turns only.

    Each assistant message's span is where the conversation rendered up to it differs from the
    conversation rendered up to the turn before it with the generation prompt: its text and its
    end-of-turn token, never the role header. A message with `weight` 0 is not trained on.
    Works for any prefix-preserving template, with no generation markers.
    """
    raw = row["messages"]
    messages = _clean_messages(raw)
    tools = row.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools

    def render(part: list[dict], **kwargs) -> str:
        return tokenizer.apply_chat_template(part, tokenize=False, tools=tools, **kwargs)

    text = render(messages)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant" or (
            raw[i].get("weight") is not None and raw[i]["weight"] == 0
        ):
            continue
        before = render(messages[:i], add_generation_prompt=True)
        through = render(messages[: i + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise NotPrefixPreserving(
                f"the chat template renders turn {i} differently once later turns follow"
            )
        spans.append((len(before), len(through)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        token if any(start <= begin < end for start, end in spans) else -100
        for token, (begin, _) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)
    ]
    return {"input_ids": encoded["input_ids"], "labels": labels}


def sft_loss_settings(args: ScriptArguments, tokenizer, dataset, eval_dataset):
    """(train, eval, SFTConfig settings): the loss on the answers (default) or on every token."""
    columns = set(dataset.column_names)
    if args.loss_on not in ("answers", "all"):
        raise SystemExit(f"error: --loss_on must be answers or all, not {args.loss_on!r}")
    if args.loss_on == "all":
        return dataset, eval_dataset, {"completion_only_loss": False, "assistant_only_loss": False}
    if {"prompt", "completion"} <= columns:
        return dataset, eval_dataset, {"completion_only_loss": True}
    if "messages" not in columns:  # plain text: no prompt to leave out
        return dataset, eval_dataset, {}
    if not getattr(tokenizer, "is_fast", False):
        raise SystemExit(
            "error: loss on the answers needs a fast tokenizer (token offsets); set loss_on: all"
        )

    def labelled(data):
        if data is None:
            return None
        return data.map(
            answer_labels, fn_kwargs={"tokenizer": tokenizer}, remove_columns=data.column_names
        )

    try:
        train, held_out = labelled(dataset), labelled(eval_dataset)
    except NotPrefixPreserving as exc:
        # TRL's own training template for known models (markers used while tokenising only;
        # the tokenizer, and so the saved model, keeps its template).
        from trl.chat_template_utils import get_training_chat_template

        try:
            get_training_chat_template(tokenizer)
        except ValueError:
            raise SystemExit(
                f"error: cannot train on the answers only: {exc}, and TRL has no training "
                "template for it; set loss_on: all"
            ) from None
        print(f"note: {exc}; using TRL's assistant_only_loss (message weights are not honoured)")
        return dataset, eval_dataset, {"assistant_only_loss": True}
    # The trainer truncates rows to max_length and drops those left with nothing to train on.
    limit = args.max_length
    empty = sum(1 for labels in train["labels"] if all(x == -100 for x in labels[:limit]))
    if empty == len(train):
        raise SystemExit(
            f"error: no row has an answer token within max_length ({limit} tokens): the "
            "prompts fill it. Raise hyperparameters.max_length, or set loss_on: all"
        )
    if empty:
        print(f"note: {empty} of {len(train)} rows have no answer within max_length; skipped")
    return train, held_out, {}


def row_lengths(dataset, tokenizer, limit: int = LENGTH_SAMPLE_ROWS) -> list[int]:
    """Token lengths of the first `limit` rows, as the trainer will see them."""
    rows = dataset.select(range(min(limit, len(dataset))))
    lengths = []
    for row in rows:
        if "input_ids" in row:
            lengths.append(len(row["input_ids"]))
            continue
        if "messages" in row:
            text = tokenizer.apply_chat_template(_clean_messages(row["messages"]), tokenize=False)
        elif "prompt" in row and "completion" in row:
            prompt, completion = row["prompt"], row["completion"]
            if isinstance(prompt, list):
                text = tokenizer.apply_chat_template(
                    _clean_messages(prompt + completion), tokenize=False
                )
            else:
                text = f"{prompt}{completion}"
        else:
            text = str(row.get("text", ""))
        lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return lengths


def packing_settings(args: ScriptArguments, dataset, tokenizer) -> dict:
    """SFTConfig packing settings: best-fit-decreasing packing, padding-free (position ids)."""
    if args.packing not in ("auto", "true", "false"):
        raise SystemExit(f"error: --packing must be auto, true or false, not {args.packing!r}")
    if args.packing == "auto":
        # A max_steps run keeps its steps: packing there would train on more tokens per step.
        lengths = row_lengths(dataset, tokenizer) if args.max_steps <= 0 else []
        mean = sum(lengths) / len(lengths) if lengths else args.max_length
        pack = mean < PACK_WHEN_MEAN_BELOW * args.max_length
    else:
        pack = args.packing == "true"
    if not pack:
        return {"packing": False}
    # "bfd" packing turns padding_free on: one flattened sequence per batch with position ids
    # restarting at each example, so no example attends to another.
    return {"packing": True, "packing_strategy": "bfd", "padding_free": True}


class TokenMeter:
    """Tokens the training steps saw: real ones, padding, and those the loss trains on."""

    def __init__(self) -> None:
        self.real = self.padded = self.trained = 0

    def count(self, batch) -> None:
        # GRPO's trainer is handed the raw rows (a list) and generates from them inside its
        # step: there are no collated tokens to count then.
        from collections.abc import Mapping

        if not isinstance(batch, Mapping):
            return
        ids, labels = batch.get("input_ids"), batch.get("labels")
        if ids is None or not hasattr(ids, "numel"):
            return
        total = int(ids.numel())
        mask = batch.get("attention_mask")
        real = int(mask.sum()) if mask is not None else total  # padding-free batches have no pads
        self.real += real
        self.padded += total - real
        if labels is not None:  # a row's first label is never a target (labels shift by one)
            self.trained += int((labels[..., 1:] != -100).sum())

    def figures(self, seconds: float) -> dict:
        seen = self.real + self.padded
        return {
            "tokens_per_second": round(self.real / seconds, 1) if seconds > 0 else None,
            "padded_share": round(self.padded / seen, 4) if seen else None,
            "tokens_seen": self.real,
            "tokens_trained": self.trained,
        }


# --- progress -------------------------------------------------------------------------------


def _progress_callback(meter: TokenMeter | None = None):
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Prints one `LMFT_PROGRESS {json}` line per logging step and per evaluation.

        With a `TokenMeter`, training lines carry real tokens per second (evaluation time left
        out), the share of padded tokens, and the tokens seen and trained on so far.
        """

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.eval_seconds = 0.0
            self.start_step = 0
            self.first_loss: float | None = None
            self.last_loss: float | None = None
            self.evals: list[tuple[int, float]] = []  # (step, eval loss); step 0 is the base model

        def on_train_begin(self, args, state, control, **kwargs):
            # A resumed run: its history (first loss, base and earlier eval losses) came with the checkpoint.
            self.started, self.start_step = time.monotonic(), state.global_step
            for entry in state.log_history:
                if "loss" in entry and self.first_loss is None:
                    self.first_loss = float(entry["loss"])
                if "eval_loss" in entry and (entry["step"], entry["eval_loss"]) not in self.evals:
                    self.evals.append((int(entry["step"]), float(entry["eval_loss"])))

        @property
        def base_eval_loss(self) -> float | None:
            return next((loss for step, loss in self.evals if step == 0), None)

        def _line(self, state, **values) -> dict:
            elapsed = time.monotonic() - self.started
            step, total = state.global_step, state.max_steps
            done = step - self.start_step
            eta = elapsed / done * (total - step) if done > 0 else None
            line = {
                "step": step,
                "total_steps": total,
                "epoch": round(float(state.epoch or 0), 4),
                **values,
                "elapsed_seconds": round(elapsed, 2),
                "eta_seconds": None if eta is None else round(eta, 2),
            }
            if self.start_step:
                line["resumed_from_step"] = self.start_step
            return line

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "eval_loss" in logs:
                self.evals.append((state.global_step, float(logs["eval_loss"])))
                line = self._line(state, eval_loss=float(logs["eval_loss"]))
                if "eval_runtime" in logs:
                    line["eval_seconds"] = float(logs["eval_runtime"])
                    self.eval_seconds += float(logs["eval_runtime"])
                if self.base_eval_loss is not None:
                    line["base_eval_loss"] = self.base_eval_loss
                print(PROGRESS_PREFIX + json.dumps(line), flush=True)
                return
            loss = logs.get("loss", logs.get("train_loss"))
            if loss is None or "train_runtime" in logs:
                return
            if self.first_loss is None:
                self.first_loss = float(loss)
            self.last_loss = float(loss)
            line = self._line(
                state, loss=float(loss), learning_rate=float(logs.get("learning_rate", 0.0))
            )
            for key in (
                "rewards/mean",
                "reward",
                "rewards/chosen",
                "rewards/accuracies",
                "grad_norm",
            ):
                if key in logs:
                    line[key.replace("/", "_")] = float(logs[key])
            if meter is not None:
                training = time.monotonic() - self.started - self.eval_seconds
                line.update(meter.figures(training))
            print(PROGRESS_PREFIX + json.dumps(line), flush=True)

    return ProgressCallback()


# --- checkpoints, the loss watchdog ---------------------------------------------------------


def _checkpoint_callback(args: ScriptArguments, *, evaluates: bool):
    """Checkpoints beyond `save_steps`: every `save_minutes` of wall time, and on SIGTERM.

    On SIGTERM (a cancelled local job, a Hugging Face job cut by its timeout, a preempted
    machine) the step in flight ends, a checkpoint is written (and pushed), and training
    stops; `main` then exits with 143. With evaluation on, the last step is always evaluated
    so `load_best_model_at_end` also weighs the final weights.
    """
    import signal
    import threading

    from transformers import TrainerCallback

    class CheckpointCallback(TrainerCallback):
        def __init__(self) -> None:
            self.last_save = time.monotonic()
            self.terminated = False
            self.previous = None

        def on_train_begin(self, a, state, control, **kwargs):
            if threading.current_thread() is threading.main_thread():  # where signals are handled
                self.previous = signal.signal(signal.SIGTERM, self._on_sigterm)

        def on_train_end(self, a, state, control, **kwargs):
            if self.previous is not None:
                signal.signal(signal.SIGTERM, self.previous)

        def _on_sigterm(self, signum, frame) -> None:
            print("SIGTERM: saving a checkpoint after this step, then stopping", flush=True)
            self.terminated = True

        def on_step_end(self, a, state, control, **kwargs):
            if self.terminated:
                control.should_save = control.should_training_stop = True
                control.should_evaluate = False
                return
            due = args.save_minutes > 0 and (
                time.monotonic() - self.last_save >= args.save_minutes * 60
            )
            if due:
                control.should_save = True
            if evaluates and state.global_step >= state.max_steps:
                control.should_evaluate = True

        def on_save(self, a, state, control, **kwargs):
            self.last_save = time.monotonic()

    return CheckpointCallback()


def _hub_checkpoint_callback(repo_id: str, private: bool):
    """Pushes each checkpoint (weights, optimizer, scheduler, RNG states) to `repo_id`'s checkpoints/last/.

    Not `hub_strategy="checkpoint"`: that also pushes the adapter to the repository's root,
    where the merged model goes, and pushes in the background, so a job killed right after a
    save may not have pushed it. Here the push finishes before training goes on.
    """
    from huggingface_hub import HfApi
    from transformers import TrainerCallback

    class HubCheckpointCallback(TrainerCallback):
        def __init__(self) -> None:
            self.api = HfApi()
            self.created = False

        def on_save(self, a, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            folder = os.path.join(a.output_dir, f"checkpoint-{state.global_step}")
            if not self.created:
                self.api.create_repo(repo_id, private=private, exist_ok=True)
                self.created = True
            self.api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                path_in_repo=HUB_CHECKPOINT_FOLDER,
                delete_patterns="*",
                commit_message=f"lm-fine-tuning: checkpoint at step {state.global_step}",
            )
            print(
                CHECKPOINT_PREFIX
                + json.dumps(
                    {"step": state.global_step, "hub_repo": repo_id, "path": HUB_CHECKPOINT_FOLDER}
                ),
                flush=True,
            )

    return HubCheckpointCallback()


def _watchdog_callback(args: ScriptArguments):
    """Stops training at once when the loss is NaN/inf, or diverges.

    Diverged: for `watchdog_patience` logging steps in a row, the loss is above
    `watchdog_factor` times its running minimum (and at least 1 nat above it, so a loss that has
    gone near zero may still wobble). No checkpoint is written of a broken model.
    """
    import math

    from transformers import TrainerCallback

    class LossWatchdog(TrainerCallback):
        def __init__(self) -> None:
            self.reason: str | None = None
            self.lowest = math.inf
            self.above = 0

        def _stop(self, control, reason: str) -> None:
            self.reason = reason
            control.should_training_stop = True
            control.should_save = control.should_evaluate = False

        def on_log(self, a, state, control, logs=None, **kwargs):
            logs, step = logs or {}, state.global_step
            for key in ("loss", "grad_norm", "eval_loss"):
                value = logs.get(key)
                if value is not None and not math.isfinite(float(value)):
                    return self._stop(control, f"watchdog: {key} is {value} at step {step}")
            loss = logs.get("loss")
            if loss is None or args.watchdog_patience <= 0:
                return
            loss = float(loss)
            limit = max(self.lowest * args.watchdog_factor, self.lowest + 1.0)
            self.above = self.above + 1 if loss > limit else 0
            self.lowest = min(self.lowest, loss)
            if self.above >= args.watchdog_patience:
                self._stop(
                    control,
                    f"watchdog: the loss diverged ({loss:.4g} at step {step}, above "
                    f"{args.watchdog_factor:g}x its minimum {self.lowest:.4g} for "
                    f"{self.above} logging steps in a row)",
                )

    return LossWatchdog()


def evaluation_settings(args: ScriptArguments, *, evaluates: bool, resuming: bool) -> dict:
    """TrainingArguments for evaluation, checkpoints and the best model."""
    save_steps = args.save_steps
    if args.eval_steps and save_steps < 1:  # load_best_model_at_end: save at evaluations only
        save_steps = args.eval_steps
    settings = dict(
        save_strategy="steps",
        save_steps=save_steps if save_steps < 1 else int(save_steps),
        save_total_limit=args.save_total_limit,
        logging_nan_inf_filter=False,  # the watchdog must see a NaN loss, not a smoothed one
    )
    if not evaluates:
        return settings
    return dict(
        settings,
        eval_strategy="steps",
        eval_steps=args.eval_steps or settings["save_steps"],
        eval_on_start=not resuming,  # the base model's eval loss (a resumed run has it already)
        per_device_eval_batch_size=args.per_device_train_batch_size,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
    )


def training_callbacks(args: ScriptArguments, *, evaluates: bool):
    """(callbacks, watchdog, checkpoint callback): watchdog, checkpoints, hub pushes, early stopping."""
    from transformers import EarlyStoppingCallback

    watchdog = _watchdog_callback(args)
    checkpoints = _checkpoint_callback(args, evaluates=evaluates)
    callbacks = [watchdog, checkpoints]
    if args.push_to_hub_repo:
        callbacks.append(_hub_checkpoint_callback(args.push_to_hub_repo, args.hub_private))
    if evaluates and args.early_stopping_patience > 0:
        callbacks.append(
            EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience)
        )
    return callbacks, watchdog, checkpoints


def stop_if_interrupted(trainer, watchdog, checkpoints) -> None:
    """Exit without saving a model when the watchdog stopped training, or SIGTERM did."""
    step = trainer.state.global_step
    if watchdog.reason:
        record = {"reason": watchdog.reason, "step": step, "resumable": False}
        code = EXIT_WATCHDOG
    elif checkpoints.terminated:
        record = {
            "reason": f"terminated (SIGTERM) at step {step}; a checkpoint was saved",
            "step": step,
            "resumable": True,
        }
        code = EXIT_TERMINATED
    else:
        return
    print(STOPPED_PREFIX + json.dumps(record), flush=True)
    print(f"error: {record['reason']}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def evaluation_result(trainer, progress) -> dict:
    """Eval losses (base, fine-tuned, history), the best step, whether early stopping ended the run."""
    state = trainer.state
    best = state.best_model_checkpoint
    best_step = int(best.rsplit("-", 1)[-1]) if best else None
    last_eval = progress.evals[-1][1] if progress.evals and progress.evals[-1][0] > 0 else None
    return {
        "base_eval_loss": progress.base_eval_loss,
        # load_best_model_at_end: the model saved is the best checkpoint's; with none better than
        # the base model (best at step 0, which has no checkpoint), it is the last step's.
        "eval_loss": dict(progress.evals).get(best_step) if best_step else last_eval,
        "best_step": best_step,
        "eval_history": [{"step": s, "eval_loss": v} for s, v in progress.evals],
        "stopped_early": bool(state.max_steps and state.global_step < state.max_steps),
        "resumed_from_step": progress.start_step or None,
        "total_steps": state.max_steps,
    }


def resolve_checkpoint(args: ScriptArguments, value: str | None) -> str | None:
    """The checkpoint folder `value` names, or None.

    `value`: a checkpoint folder, a folder of `checkpoint-N` folders (the last one is taken),
    `hub` (the `checkpoints/last` folder of --push_to_hub_repo) or `hub:NAMESPACE/REPO`.
    """
    if not value:
        return None
    if value == "hub" or value.startswith("hub:"):
        repo = value.removeprefix("hub").removeprefix(":") or args.push_to_hub_repo
        if not repo:
            raise SystemExit(f"error: {value!r} needs --push_to_hub_repo or a repo (hub:NS/NAME)")
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo,
            allow_patterns=[f"{HUB_CHECKPOINT_FOLDER}/*"],
            local_dir=os.path.join(args.output_dir, "hub-checkpoint"),
        )
        value = os.path.join(local, HUB_CHECKPOINT_FOLDER)
    if os.path.isfile(os.path.join(value, "trainer_state.json")) or os.path.isfile(
        os.path.join(value, "adapter_config.json")
    ):
        return value
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(value) if os.path.isdir(value) else None
    if found is None:
        raise SystemExit(f"error: no checkpoint in {value}")
    return found


def warm_start(args: ScriptArguments, model):
    """`model` with the LoRA weights of --warm_start_from, trainable (None when not asked)."""
    folder = resolve_checkpoint(args, args.warm_start_from)
    if folder is None:
        return None
    if not args.use_lora:
        raise SystemExit(
            "error: --warm_start_from continues a LoRA adapter; use it with --use_lora"
        )
    from peft import PeftModel

    print(f"warm start from the adapter in {folder}", flush=True)
    return PeftModel.from_pretrained(model, folder, is_trainable=True)


# --- training -------------------------------------------------------------------------------


def _trainer_for(args: ScriptArguments, common: dict, sft: dict | None = None):
    """The TRL config and trainer class for the method (`sft`: SFTConfig's loss and packing settings)."""
    import trl

    if args.method == "sft":
        return trl.SFTConfig(max_length=args.max_length, **common, **(sft or {})), trl.SFTTrainer
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


def raise_if_disk_full(exc: BaseException, folder: str, doing: str) -> None:
    """Turn a full disk (an OSError, or safetensors' own error) into an error that says where."""
    import errno
    import shutil

    full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if full or "No space left on device" in str(exc):  # safetensors raises its own error
        free = shutil.disk_usage(folder).free if os.path.isdir(folder) else 0
        raise SystemExit(
            f"error: the disk holding {folder} is full ({free / 1e6:.0f} MB free) while {doing}. "
            "Free space there, or give --output_dir on a bigger disk, and run again"
        ) from exc


def save_atomically(target: str, *savers) -> None:
    """Save into `target` only once everything is written: into a sibling folder, then rename.

    A full disk (or a kill) mid-save leaves no `target` that passes for a finished model: the
    partial folder is removed and the error says where the disk is full.
    """
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
        raise_if_disk_full(
            exc, os.path.dirname(os.path.abspath(target)), f"saving {target}; nothing was kept"
        )
        raise
    if os.path.isdir(target):  # a previous save of this output folder
        shutil.rmtree(target)
    os.replace(partial, target)


def load_model(args: ScriptArguments, device: str, mode: str):
    """The base model in its PRECISION dtype (bitsandbytes NF4 for QLoRA), with SDPA attention."""
    import torch
    from transformers import AutoModelForCausalLM

    precision = PRECISION[device][mode]
    kwargs: dict = {"attn_implementation": ATTENTION}
    if precision["weights"] == "nf4":
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if precision["autocast"] == "bf16" else torch.float16
        kwargs.update(
            quantization_config=BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=compute,
            ),
            dtype=compute,
            device_map={"": torch.cuda.current_device()},
        )
    else:
        kwargs["dtype"] = getattr(torch, str(precision["weights"]))
    try:
        return AutoModelForCausalLM.from_pretrained(args.model_name_or_path, **kwargs)
    except ValueError as exc:  # an architecture without an SDPA implementation
        if ATTENTION not in str(exc).lower():
            raise
        print(f"note: the model has no {ATTENTION} attention; using its default", flush=True)
        del kwargs["attn_implementation"]
        return AutoModelForCausalLM.from_pretrained(args.model_name_or_path, **kwargs)


def merged_model(args: ScriptArguments, model, mode: str, adapter_dir: str):
    """The adapter merged into its base; a QLoRA adapter into the bf16 base, not the 4-bit one."""
    if mode != "qlora":
        return model.merge_and_unload()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # On the CPU: the 4-bit model stays on the GPU, the bf16 copy is only merged and saved.
    base = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, dtype=torch.bfloat16)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()


def _metered(trainer_cls, meter: TokenMeter):
    """`trainer_cls` counting the tokens of every training batch into `meter`."""

    class Metered(trainer_cls):
        def training_step(self, model, inputs, *args, **kwargs):
            meter.count(inputs)
            return super().training_step(model, inputs, *args, **kwargs)

    Metered.__name__ = Metered.__qualname__ = trainer_cls.__name__
    return Metered


@dataclass
class TrainingSetup:
    """What `main` trains with: the trainer, its callbacks and meter, and how it was configured."""

    trainer: Any
    tokenizer: Any
    progress: Any
    watchdog: Any
    checkpoints: Any
    meter: TokenMeter
    checkpoint: str | None
    device: str
    mode: str
    precision: dict
    sft: dict


def build_trainer(args: ScriptArguments) -> TrainingSetup:
    """The model in its precision, the data with its loss masks and packing, the TRL trainer."""
    import torch
    from peft import LoraConfig
    from transformers import AutoTokenizer

    device, mode = device_class(), training_mode(args)
    # Before any model, data or Hub is touched.
    if problem := quantization_problem(args.quantize, use_lora=args.use_lora, device=device):
        raise SystemExit(f"error: {problem}")
    precision = PRECISION[device][mode]
    print(
        f"precision: {device}, {mode}: weights {precision['weights']}, trained "
        f"{precision['trainable']}, autocast {precision['autocast'] or 'off'}, attention {ATTENTION}",
        flush=True,
    )
    os.environ.setdefault("TRACKIO_PROJECT", args.trackio_project)
    if args.trackio_space_id:
        os.environ.setdefault("TRACKIO_SPACE_ID", args.trackio_space_id)
    os.makedirs(args.output_dir, exist_ok=True)

    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_model(args, device, mode)
    dataset, eval_dataset = split_evaluation(args, load_training_dataset(args))
    sft: dict = {}
    if args.method == "sft":
        dataset, eval_dataset, sft = sft_loss_settings(args, tokenizer, dataset, eval_dataset)
        sft.update(packing_settings(args, dataset, tokenizer))
        print(f"sft: {json.dumps(sft)}", flush=True)
    checkpoint = resolve_checkpoint(args, args.resume_from_checkpoint)

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
        **evaluation_settings(
            args, evaluates=eval_dataset is not None, resuming=checkpoint is not None
        ),
        report_to=["trackio"],
        run_name=args.run_name,
        project=args.trackio_project,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        bf16=precision["autocast"] == "bf16",
        fp16=precision["autocast"] == "fp16",  # with the Trainer's loss scaling
    )
    config, trainer_cls = _trainer_for(args, common, sft)
    peft_config = None
    if (started := warm_start(args, model)) is not None:
        model = started
    elif args.use_lora:
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
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if args.method == "grpo":
        kwargs["reward_funcs"] = [
            REWARD_FUNCTIONS[name] for name in args.reward_functions.split(",")
        ]
    meter = TokenMeter()
    progress = _progress_callback(meter)
    callbacks, watchdog, checkpoints = training_callbacks(args, evaluates=eval_dataset is not None)
    trainer = _metered(trainer_cls, meter)(**kwargs, callbacks=[progress, *callbacks])
    return TrainingSetup(
        trainer=trainer,
        tokenizer=tokenizer,
        progress=progress,
        watchdog=watchdog,
        checkpoints=checkpoints,
        meter=meter,
        checkpoint=checkpoint,
        device=device,
        mode=mode,
        precision=precision,
        sft=sft,
    )


def main(args: ScriptArguments) -> dict:
    setup = build_trainer(args)
    trainer, tokenizer, progress, meter = (
        setup.trainer,
        setup.tokenizer,
        setup.progress,
        setup.meter,
    )
    started = time.monotonic()
    try:
        train_output = trainer.train(resume_from_checkpoint=setup.checkpoint)
    except BaseException as exc:
        raise_if_disk_full(exc, args.output_dir, "writing a checkpoint")
        raise
    train_seconds = time.monotonic() - started
    stop_if_interrupted(trainer, setup.watchdog, setup.checkpoints)

    model = trainer.model
    if args.use_lora:
        adapter_dir = os.path.join(args.output_dir, "adapter")
        save_atomically(adapter_dir, model.save_pretrained)
        model = merged_model(args, model, setup.mode, adapter_dir)
    # The template the model was given, never a training variant: GGUF loaders reject the markers.
    tokenizer.chat_template = without_generation_tags(tokenizer.chat_template)
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
        "precision": {
            "device": setup.device,
            "mode": setup.mode,
            **setup.precision,
            "attention": ATTENTION,
        },
        "sft": setup.sft or None,
        **meter.figures(train_seconds),
        "trackio_project": args.trackio_project,
        "hub_repo": None,
        "hub_revision": None,
        **evaluation_result(trainer, progress),
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
            result["hub_revision"] = api.list_repo_commits(args.push_to_hub_repo)[0].commit_id
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

    # transformers types its argument as its DataClassType protocol, which mypy does not match to a dataclass.
    (script_args,) = HfArgumentParser(ScriptArguments).parse_args_into_dataclasses()  # type: ignore[arg-type]
    if script_args.method not in ("sft", "dpo", "grpo", "kto"):
        sys.exit(f"error: --method must be sft, dpo, grpo or kto, not {script_args.method!r}")
    print("LMFT_ARGS " + json.dumps(asdict(script_args)), flush=True)
    main(script_args)
