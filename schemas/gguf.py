"""Records of the GGUF step: what to convert, what came out, how well each file answers."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class QuantType(str, Enum):  # noqa: UP042  (STYLE.md: fixed sets are (str, Enum))
    """llama.cpp file types, by the names `llama-quantize` uses (`F16` is the unquantized reference)."""

    F16 = "F16"
    BF16 = "BF16"
    Q8_0 = "Q8_0"
    Q6_K = "Q6_K"
    Q5_K_M = "Q5_K_M"
    Q5_K_S = "Q5_K_S"
    Q5_0 = "Q5_0"
    Q5_1 = "Q5_1"
    Q4_K_M = "Q4_K_M"
    Q4_K_S = "Q4_K_S"
    Q4_0 = "Q4_0"
    Q4_1 = "Q4_1"
    Q3_K_L = "Q3_K_L"
    Q3_K_M = "Q3_K_M"
    Q3_K_S = "Q3_K_S"
    Q2_K = "Q2_K"
    Q2_K_S = "Q2_K_S"
    IQ4_NL = "IQ4_NL"
    IQ4_XS = "IQ4_XS"
    IQ3_M = "IQ3_M"
    IQ3_S = "IQ3_S"
    IQ3_XS = "IQ3_XS"
    IQ3_XXS = "IQ3_XXS"
    IQ2_M = "IQ2_M"
    IQ2_S = "IQ2_S"
    IQ2_XS = "IQ2_XS"
    IQ2_XXS = "IQ2_XXS"
    IQ1_M = "IQ1_M"
    IQ1_S = "IQ1_S"

    @property
    def needs_importance_matrix(self) -> bool:
        """i-quants (and Q2_K_S) are only sound with an importance matrix."""
        return self.value.startswith("IQ") or self is QuantType.Q2_K_S

    @property
    def bits_per_weight(self) -> float:
        """Approximate size per weight (llama-quantize's table), for disk-space estimates."""
        return _BITS_PER_WEIGHT.get(self, 8.5)


_BITS_PER_WEIGHT = {
    QuantType.F16: 16.0,
    QuantType.BF16: 16.0,
    QuantType.Q8_0: 8.5,
    QuantType.Q6_K: 6.6,
    QuantType.Q5_K_M: 5.7,
    QuantType.Q5_K_S: 5.5,
    QuantType.Q5_0: 5.5,
    QuantType.Q5_1: 6.0,
    QuantType.Q4_K_M: 4.9,
    QuantType.Q4_K_S: 4.6,
    QuantType.Q4_0: 4.5,
    QuantType.Q4_1: 5.0,
    QuantType.Q3_K_L: 4.3,
    QuantType.Q3_K_M: 3.9,
    QuantType.Q3_K_S: 3.5,
    QuantType.Q2_K: 3.4,
}

DEFAULT_QUANT_TYPES = [QuantType.Q4_K_M, QuantType.Q8_0]


ModelSource = Annotated[
    str,
    Field(
        min_length=1,
        description="The model to convert: a folder on the worker, or a Hub repo id.",
        examples=["me/smollm2-pirate"],
    ),
]
"""The `convert` flow's `model` parameter (the MCP tool `convert_to_gguf` takes the same)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GGUFLineage(_Strict):
    """Where a model came from; written into every GGUF it becomes."""

    base_model: Annotated[
        str, Field(min_length=1, description="Base model the fine-tune started from.")
    ]
    dataset: Annotated[
        str | None, Field(description="Training dataset (local path or Hub id).")
    ] = None
    dataset_sha256: Annotated[
        str | None,
        Field(
            pattern=r"^[0-9a-f]{64}$",
            description="sha256 of the dataset's files (local) or of id@revision (Hub).",
        ),
    ] = None
    method: Annotated[str | None, Field(description="Training method (sft, dpo, grpo, kto).")] = (
        None
    )
    pipeline_run_id: Annotated[
        str | None, Field(description="Prefect flow run that produced the model.")
    ] = None
    name: Annotated[str | None, Field(description="Model name written as general.name.")] = None
    registry_id: Annotated[
        str | None,
        Field(description="The model's entry in the model registry (`lmft models show`)."),
    ] = None
    eval_loss: Annotated[
        float | None, Field(description="Eval loss of the trained model on its held-out rows.")
    ] = None


class HeldOutSplit(BaseModel):
    """The rows the training job held out for evaluation: `eval_ratio` of the dataset (at most
    `eval_max_rows`), chosen with `seed` by `datasets`' `train_test_split`, as train.py does."""

    ratio: float = Field(gt=0, le=0.5)
    max_rows: int = Field(ge=1)
    seed: int = Field(ge=0)


class GGUFSettings(_Strict):
    """How to convert and what counts as good enough."""

    quant_types: Annotated[
        list[QuantType], Field(description="Quantized variants to build besides the f16 reference.")
    ] = list(DEFAULT_QUANT_TYPES)
    reference_type: Annotated[
        QuantType, Field(description="Unquantized reference: F16 or BF16.")
    ] = QuantType.F16
    max_nll_increase: Annotated[
        float,
        Field(
            gt=0,
            le=10,
            description="A variant fails when its mean NLL exceeds the reference's by more (nats/token).",
        ),
    ] = 0.05
    prompts: Annotated[
        list[str], Field(min_length=1, description="Chat prompts each variant must answer sanely.")
    ] = [
        "What is the capital of France?",
        "Name the three primary colors.",
        "Write one short sentence about the sea.",
    ]
    max_answer_tokens: Annotated[
        int, Field(ge=8, le=2048, description="Token budget per answer.")
    ] = 96
    context_length: Annotated[
        int, Field(ge=128, le=32768, description="Context used to score held-out text.")
    ] = 512
    disk_reserve_bytes: Annotated[
        int, Field(ge=0, description="Free space to leave on the output disk after conversion.")
    ] = 256 * 1024 * 1024
    threads: Annotated[
        int, Field(ge=0, le=256, description="CPU threads for quantizing and evaluating (0 = all).")
    ] = 0


class GGUFVariant(_Strict):
    """One GGUF file."""

    quant_type: QuantType
    path: str
    size_bytes: int
    seconds: float = Field(description="Time to write it (conversion or quantization).")


class GGUFArtifacts(_Strict):
    """The files one conversion produced."""

    model: str = Field(description="Source model folder or Hub id.")
    output_dir: str
    reference: GGUFVariant
    variants: list[GGUFVariant]
    converter_version: str = Field(
        description="llama-cpp-python release whose llama.cpp converter wrote the files."
    )
    lineage: GGUFLineage

    @property
    def all_files(self) -> list[GGUFVariant]:
        return [self.reference, *self.variants]


class Answer(_Strict):
    """One chat answer of one variant."""

    prompt: str
    text: str
    finish_reason: str | None
    tokens: int
    degenerate: str | None = Field(
        default=None, description="Why the answer is degenerate, or None."
    )


class VariantCheck(_Strict):
    """How one variant did in the quality gate."""

    quant_type: QuantType
    path: str
    size_bytes: int
    load_seconds: float
    tokens_per_second: float
    mean_nll: float
    delta_nll: float
    answers: list[Answer]
    passed: bool
    reasons: list[str] = Field(
        default_factory=list, description="Why it failed (empty when it passed)."
    )


class QualityReport(_Strict):
    """The quality gate's verdict over every variant, and the file to deploy."""

    reference: VariantCheck
    variants: list[VariantCheck]
    max_nll_increase: float
    held_out_texts: int
    held_out_tokens: int
    chosen: str = Field(description="Path of the GGUF to deploy.")
    chosen_type: QuantType
    decision: str = Field(description="Which file is deployed and why, in one sentence.")


class HubTarget(_Strict):
    """Where to upload the GGUFs: `{namespace}/{name}-GGUF` on a Hugging Face endpoint."""

    namespace: Annotated[str, Field(min_length=1, description="User or organisation on the Hub.")]
    name: Annotated[str, Field(min_length=1, description="Model name; the repo is '{name}-GGUF'.")]
    endpoint: Annotated[
        str | None, Field(description="Hub endpoint (default https://huggingface.co).")
    ] = None
    private: bool = True

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}-GGUF"


class ConversionResult(_Strict):
    """What the `convert` flow returns: the files, the gate's verdict, and where they were uploaded."""

    artifacts: GGUFArtifacts
    quality: QualityReport
    hub_url: str | None = None

    @property
    def chosen(self) -> str:
        """Path of the GGUF to deploy (the smallest variant that passed, else the reference)."""
        return self.quality.chosen
