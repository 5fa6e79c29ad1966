"""The validation report and its parts: issues, codes, formats, token statistics."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, Field

from schemas.request import Method


class Severity(str, Enum):
    """Errors stop the pipeline; warnings are shown and let it go on."""

    ERROR = "error"
    WARNING = "warning"


class IssueCode(str, Enum):
    """Stable codes, one per problem class (see docs/validation.md)."""

    # file and source
    EMPTY_FILE = "empty_file"
    INVALID_UTF8 = "invalid_utf8"
    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    UNREADABLE_FILE = "unreadable_file"
    NO_DATA_FILES = "no_data_files"
    HUB_UNREACHABLE = "hub_unreachable"
    DATASET_NOT_FOUND = "dataset_not_found"
    SPLIT_NOT_FOUND = "split_not_found"
    # columns and format
    MISSING_COLUMNS = "missing_columns"
    MIXED_FORMATS = "mixed_formats"
    UNSUITABLE_FORMAT = "unsuitable_format"
    NEEDS_COLUMN_MAP = "needs_column_map"
    COLUMN_MAP_UNKNOWN_COLUMN = "column_map_unknown_column"
    TOO_FEW_ROWS = "too_few_rows"
    # messages
    MESSAGES_NOT_LIST = "messages_not_list"
    EMPTY_MESSAGES = "empty_messages"
    MESSAGE_NOT_OBJECT = "message_not_object"
    MISSING_ROLE = "missing_role"
    MISSING_CONTENT = "missing_content"
    UNRECOGNISED_MESSAGE_KEY = "unrecognised_message_key"
    UNRECOGNISED_ROLE = "unrecognised_role"
    NON_STRING_CONTENT = "non_string_content"
    NO_ASSISTANT_MESSAGE = "no_assistant_message"
    CONSECUTIVE_SAME_ROLE = "consecutive_same_role"
    EMPTY_CONTENT = "empty_content"
    # other columns
    NON_STRING_FIELD = "non_string_field"
    EMPTY_FIELD = "empty_field"
    IDENTICAL_CHOSEN_REJECTED = "identical_chosen_rejected"
    NOT_ENDING_WITH_ASSISTANT = "not_ending_with_assistant"
    INVALID_LABEL = "invalid_label"
    SINGLE_LABEL_VALUE = "single_label_value"
    INVALID_WEIGHT = "invalid_weight"
    # warnings
    DUPLICATE_ROW = "duplicate_row"
    TOO_LONG = "too_long"
    TOKENS_NOT_COUNTED = "tokens_not_counted"
    REWARD_COLUMNS = "reward_columns"


WARNING_CODES = frozenset(
    {
        IssueCode.DUPLICATE_ROW,
        IssueCode.TOO_LONG,
        IssueCode.TOKENS_NOT_COUNTED,
        IssueCode.REWARD_COLUMNS,
    }
)


class FormatKind(str, Enum):
    """TRL's dataset types (https://huggingface.co/docs/trl/dataset_formats)."""

    LANGUAGE_MODELING = "language modeling"
    PROMPT_ONLY = "prompt-only"
    PROMPT_COMPLETION = "prompt-completion"
    PREFERENCE_EXPLICIT = "preference (explicit prompt)"
    PREFERENCE_IMPLICIT = "preference (implicit prompt)"
    UNPAIRED_PREFERENCE = "unpaired preference"
    STEPWISE_SUPERVISION = "stepwise supervision"
    SHAREGPT = "ShareGPT conversations"


SUITABLE_METHODS: dict[FormatKind, tuple[Method, ...]] = {
    FormatKind.LANGUAGE_MODELING: (Method.SFT,),
    FormatKind.PROMPT_ONLY: (Method.GRPO,),
    FormatKind.PROMPT_COMPLETION: (Method.SFT, Method.GRPO),
    FormatKind.PREFERENCE_EXPLICIT: (Method.DPO, Method.GRPO),
    FormatKind.PREFERENCE_IMPLICIT: (Method.DPO,),
    FormatKind.UNPAIRED_PREFERENCE: (Method.KTO, Method.GRPO),
    FormatKind.STEPWISE_SUPERVISION: (),
    FormatKind.SHAREGPT: (),
}


class ValidationIssue(BaseModel):
    """One problem found in the dataset."""

    code: IssueCode = Field(description="Stable problem code, e.g. 'missing_role'.")
    severity: Severity = Severity.ERROR
    message: str
    row: int | None = Field(
        default=None,
        description="1-based row number: the line number in a JSONL file, the data row otherwise.",
    )
    column: str | None = None
    file: str | None = Field(default=None, description="The file, when the dataset is a folder.")

    def describe(self) -> str:
        where = ", ".join(
            part
            for part in (
                self.file and f"file {self.file}",
                self.row is not None and f"row {self.row}",
                self.column and f"column {self.column!r}",
            )
            if part
        )
        return f"[{self.code.value}] " + (f"{where}: " if where else "") + self.message


class TokenStats(BaseModel):
    """Tokenised lengths of the rows, as the training will see them."""

    rows: int = Field(
        description="Rows tokenised (all of them, or the first `rows` of a big dataset)."
    )
    total_tokens: int = Field(
        description="Tokens in the whole dataset (extrapolated when `exact` is false)."
    )
    mean_tokens: float
    max_tokens: int
    p95_tokens: int
    over_max_length: int = Field(
        description="Rows longer than max_length (the `over_bound` ones included)."
    )
    over_bound: int = Field(
        default=0,
        description="Rows with more characters than max_length tokens can hold (`bound_chars`): "
        "counted as over max_length, at their lower-bound length, without being tokenised.",
    )
    bound_chars: int | None = Field(
        default=None,
        description="max_length × the characters of the tokenizer's longest token: a row above it "
        "is over max_length whatever its text.",
    )
    max_length: int
    exact: bool = Field(description="True when every row was tokenised.")
    tokenizer: str
    chat_template: bool = Field(description="Whether the tokenizer's chat template was applied.")
    rows_per_second: float


class ValidationReport(BaseModel):
    """What the validator found: format, suitable methods, problems, statistics."""

    dataset: str
    method: Method
    row_count: int
    columns: list[str] = []
    detected_format: str | None = Field(
        default=None, description="e.g. 'conversational prompt-completion'."
    )
    format_kind: FormatKind | None = None
    conversational: bool | None = None
    suitable_methods: list[Method] = []
    errors: list[ValidationIssue] = Field(
        default=[], description="The first few errors of each code; `error_counts` has the totals."
    )
    warnings: list[ValidationIssue] = []
    error_counts: dict[str, int] = Field(
        default_factory=dict, description="Errors per code, all rows counted."
    )
    warning_counts: dict[str, int] = Field(default_factory=dict)
    column_map: dict[str, str] = Field(
        default_factory=dict,
        description="Proposed renames to the expected columns; pass it as dataset.column_map.",
    )
    reward_columns: list[str] = Field(
        default=[], description="GRPO: extra columns the reward functions receive."
    )
    token_stats: TokenStats | None = None
    seconds: float = Field(default=0.0, description="Wall time of the structural check.")

    @property
    def ok(self) -> bool:
        return not self.errors


class DatasetInvalid(ValueError):
    """The dataset cannot be used for the method; the message lists the errors."""
