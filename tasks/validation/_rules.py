"""The rules, applied to one row at a time (a decoded JSON object or a table row).

`check_row` is the reference implementation: it never raises, whatever the row holds,
and every fast path must agree with it (the JSONL fast path hands every row it is not
sure about back to it).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from schemas.validation import FormatKind, IssueCode

ROLES = ("system", "user", "assistant", "tool", "developer")
"""Roles the chat templates of TRL-trainable models accept."""

MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "tool_calls", "tool_call_id", "weight", "thinking"}
)
"""Keys a message may carry (OpenAI/TRL conversational format)."""

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
    "function_call": "assistant",
    "observation": "tool",
}

RowIssue = tuple[IssueCode, str | None, str]
"""(code, column, message) for one problem of one row."""

KNOWN_COLUMNS = (
    "messages",
    "text",
    "prompt",
    "completion",
    "chosen",
    "rejected",
    "label",
    "completions",
    "labels",
    "conversations",
)

# Column names people use for what TRL calls by another name; the report proposes the
# rename as a column_map.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "messages": ("conversation", "dialog", "dialogue", "chat", "turns"),
    "text": ("content", "document", "sentence", "body"),
    "prompt": ("instruction", "question", "query", "input", "user", "prompt_text", "problem"),
    "completion": ("output", "answer", "response", "target", "assistant", "solution", "reply"),
    "chosen": ("preferred", "chosen_response", "accepted", "positive", "better", "good"),
    "rejected": ("dispreferred", "rejected_response", "negative", "worse", "bad"),
    "label": ("desirable", "is_desirable", "kto_label", "thumbs_up"),
}


def detect_kind(columns: set[str] | frozenset[str]) -> FormatKind | None:
    """The TRL dataset type a set of columns makes, or None when no type matches."""
    if "messages" in columns:
        return FormatKind.LANGUAGE_MODELING
    if "chosen" in columns and "rejected" in columns:
        return (
            FormatKind.PREFERENCE_EXPLICIT
            if "prompt" in columns
            else FormatKind.PREFERENCE_IMPLICIT
        )
    if "prompt" in columns and "completions" in columns and "labels" in columns:
        return FormatKind.STEPWISE_SUPERVISION
    if "prompt" in columns and "completion" in columns:
        return (
            FormatKind.UNPAIRED_PREFERENCE if "label" in columns else FormatKind.PROMPT_COMPLETION
        )
    if "prompt" in columns:
        return FormatKind.PROMPT_ONLY
    if "text" in columns:
        return FormatKind.LANGUAGE_MODELING
    if "conversations" in columns:
        return FormatKind.SHAREGPT
    return None


def main_column(kind: FormatKind, columns: set[str] | frozenset[str]) -> str:
    """The column whose type says whether a row is conversational."""
    if kind is FormatKind.LANGUAGE_MODELING:
        return "messages" if "messages" in columns else "text"
    if kind is FormatKind.PREFERENCE_IMPLICIT:
        return "chosen"
    if kind is FormatKind.SHAREGPT:
        return "conversations"
    return "prompt"


@lru_cache(maxsize=4096)
def sequence_issues(
    roles: tuple[str, ...], column: str, need_assistant: bool, end_assistant: bool
) -> tuple[RowIssue, ...]:
    """Problems of the role sequence of a conversation (cached: there are few distinct sequences)."""
    found: list[RowIssue] = []
    for index in range(1, len(roles)):
        if roles[index] == roles[index - 1] and roles[index] != "tool":
            found.append(
                (
                    IssueCode.CONSECUTIVE_SAME_ROLE,
                    column,
                    f"messages {index} and {index + 1} both have role {roles[index]!r}; "
                    "merge them or alternate user and assistant turns",
                )
            )
            break
    if need_assistant and "assistant" not in roles:
        found.append(
            (
                IssueCode.NO_ASSISTANT_MESSAGE,
                column,
                "no message has role 'assistant': there is nothing for the model to learn",
            )
        )
    elif end_assistant and roles and roles[-1] != "assistant":
        found.append(
            (
                IssueCode.NOT_ENDING_WITH_ASSISTANT,
                column,
                f"the last message has role {roles[-1]!r}; a preference side must end with an assistant turn",
            )
        )
    return tuple(found)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_turns(
    value: Any, column: str, *, need_assistant: bool, end_assistant: bool, sharegpt: bool = False
) -> list[RowIssue]:
    """Check a conversational column: a list of {role, content} messages."""
    if not isinstance(value, list):
        return [
            (
                IssueCode.MESSAGES_NOT_LIST,
                column,
                f"expected a list of messages, found {type(value).__name__} {_short(value)}",
            )
        ]
    if not value:
        return [(IssueCode.EMPTY_MESSAGES, column, "the conversation has no messages")]
    found: list[RowIssue] = []
    seen: set[IssueCode] = set()

    def add(code: IssueCode, message: str) -> None:
        if code not in seen:
            seen.add(code)
            found.append((code, column, message))

    roles: list[str] = []
    for number, turn in enumerate(value, start=1):
        if not isinstance(turn, dict):
            add(
                IssueCode.MESSAGE_NOT_OBJECT,
                f"message {number} is {type(turn).__name__} {_short(turn)}, not an object",
            )
            continue
        if sharegpt and ("from" in turn or "value" in turn):
            turn = {
                ("role" if k == "from" else "content" if k == "value" else k): v
                for k, v in turn.items()
            }
            if isinstance(turn.get("role"), str):
                turn["role"] = SHAREGPT_ROLES.get(turn["role"], turn["role"])
        unknown = sorted(str(k) for k in turn if k not in MESSAGE_KEYS)
        if unknown:
            add(
                IssueCode.UNRECOGNISED_MESSAGE_KEY,
                f"message {number} has unrecognised keys {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(sorted(MESSAGE_KEYS))}",
            )
        role = turn.get("role")
        if role is None:
            add(IssueCode.MISSING_ROLE, f"message {number} has no 'role'")
        elif not isinstance(role, str) or role not in ROLES:
            add(
                IssueCode.UNRECOGNISED_ROLE,
                f"message {number} has role {_short(role)}; use one of {', '.join(ROLES)}",
            )
        else:
            roles.append(role)
        calls_tool = bool(turn.get("tool_calls"))
        if "content" not in turn:
            if not calls_tool:
                add(IssueCode.MISSING_CONTENT, f"message {number} has no 'content'")
        else:
            content = turn["content"]
            if content is None and calls_tool:
                pass
            elif not isinstance(content, str):
                add(
                    IssueCode.NON_STRING_CONTENT,
                    f"message {number} content is {type(content).__name__} {_short(content)}; it must be a string",
                )
            elif not content.strip() and not calls_tool:
                add(
                    IssueCode.EMPTY_CONTENT, f"message {number} content is empty or whitespace only"
                )
        if "weight" in turn and turn["weight"] not in (0, 1):
            add(
                IssueCode.INVALID_WEIGHT,
                f"message {number} weight is {_short(turn['weight'])}; use 0 or 1",
            )
    if len(roles) == len(value):
        found.extend(sequence_issues(tuple(roles), column, need_assistant, end_assistant))
    return found


def check_text(value: Any, column: str) -> list[RowIssue]:
    """Check a standard (plain string) column."""
    if not isinstance(value, str):
        return [
            (
                IssueCode.NON_STRING_FIELD,
                column,
                f"expected a string, found {type(value).__name__} {_short(value)}",
            )
        ]
    if not value.strip():
        return [(IssueCode.EMPTY_FIELD, column, "the value is empty or whitespace only")]
    return []


def check_weight(value: Any) -> list[RowIssue]:
    """A numeric `weight` column is accepted; it must be a finite, non-negative number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return [
            (IssueCode.INVALID_WEIGHT, "weight", f"weight is {_short(value)}; it must be a number")
        ]
    if not math.isfinite(value) or value < 0:
        return [
            (IssueCode.INVALID_WEIGHT, "weight", f"weight is {value}; it must be finite and >= 0")
        ]
    return []


SIDES: dict[FormatKind, tuple[tuple[str, bool, bool], ...]] = {
    # column, needs an assistant turn, must end with an assistant turn (when conversational)
    FormatKind.PROMPT_ONLY: (("prompt", False, False),),
    FormatKind.PROMPT_COMPLETION: (("prompt", False, False), ("completion", True, False)),
    FormatKind.UNPAIRED_PREFERENCE: (("prompt", False, False), ("completion", True, False)),
    FormatKind.PREFERENCE_EXPLICIT: (
        ("prompt", False, False),
        ("chosen", False, True),
        ("rejected", False, True),
    ),
    FormatKind.PREFERENCE_IMPLICIT: (("chosen", True, True), ("rejected", True, True)),
    FormatKind.STEPWISE_SUPERVISION: (("prompt", False, False),),
}
"""The columns each format checks, after the language-modelling column (`messages`/`text`)."""


def _side(
    row: dict,
    column: str,
    conversational: bool,
    *,
    need_assistant: bool,
    end_assistant: bool,
    sharegpt: bool,
) -> list[RowIssue]:
    value = row.get(column)
    if value is None:
        return [(IssueCode.MISSING_COLUMNS, column, f"the row has no {column!r}")]
    if conversational:
        return check_turns(
            value,
            column,
            need_assistant=need_assistant,
            end_assistant=end_assistant,
            sharegpt=sharegpt,
        )
    return check_text(value, column)


def check_row(
    row: Any, *, sharegpt_messages: bool = False
) -> tuple[tuple[FormatKind, bool] | None, list[RowIssue]]:
    """Detect the row's format and check it; never raises.

    Returns `((kind, conversational) or None, issues)`. `sharegpt_messages` accepts
    ShareGPT `from`/`value` turns in `messages` (after a conversations→messages column map).
    """
    if not isinstance(row, dict):
        return None, [
            (
                IssueCode.NOT_AN_OBJECT,
                None,
                f"the row is {type(row).__name__} {_short(row)}, not an object",
            )
        ]
    columns = frozenset(k for k, v in row.items() if v is not None)
    kind = detect_kind(columns)
    if kind is None:
        present = ", ".join(sorted(map(str, row))) or "none"
        return None, [
            (
                IssueCode.MISSING_COLUMNS,
                None,
                f"no recognised columns (messages, text, prompt/completion, chosen/rejected …); found {present}",
            )
        ]
    main = main_column(kind, columns)
    conversational = main in ("messages", "conversations") or (
        main != "text" and isinstance(row[main], list)
    )
    issues: list[RowIssue] = []
    if "weight" in row:
        issues += check_weight(row["weight"])
    if kind is FormatKind.SHAREGPT:
        issues += check_turns(
            row[main], main, need_assistant=True, end_assistant=False, sharegpt=True
        )
        return (kind, True), issues
    if kind is FormatKind.LANGUAGE_MODELING:
        issues += _side(
            row,
            main,
            conversational,
            need_assistant=True,
            end_assistant=False,
            sharegpt=sharegpt_messages,
        )
    for column, need_assistant, end_assistant in SIDES.get(kind, ()):
        issues += _side(
            row,
            column,
            conversational,
            need_assistant=need_assistant,
            end_assistant=end_assistant,
            sharegpt=False,
        )
    if (
        kind in (FormatKind.PREFERENCE_EXPLICIT, FormatKind.PREFERENCE_IMPLICIT)
        and row["chosen"] == row["rejected"]
    ):
        issues.append(
            (
                IssueCode.IDENTICAL_CHOSEN_REJECTED,
                "rejected",
                "chosen and rejected are the same; the pair teaches nothing",
            )
        )
    if kind is FormatKind.UNPAIRED_PREFERENCE and not isinstance(row.get("label"), bool):
        issues.append(
            (
                IssueCode.INVALID_LABEL,
                "label",
                f"label is {_short(row.get('label'))}; it must be true or false",
            )
        )
    if kind is FormatKind.STEPWISE_SUPERVISION:
        completions, labels = row.get("completions"), row.get("labels")
        if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
            issues.append(
                (IssueCode.NON_STRING_FIELD, "completions", "completions must be a list of strings")
            )
        if not isinstance(labels, list) or not all(isinstance(x, bool) for x in labels):
            issues.append((IssueCode.INVALID_LABEL, "labels", "labels must be a list of booleans"))
        elif isinstance(completions, list) and len(labels) != len(completions):
            issues.append(
                (
                    IssueCode.INVALID_LABEL,
                    "labels",
                    f"{len(labels)} labels for {len(completions)} completions; give one per step",
                )
            )
    return (kind, conversational), issues


def propose_column_map(columns: set[str] | frozenset[str]) -> dict[str, str]:
    """Renames from the columns present to TRL's names, for columns found under a known synonym."""
    proposal: dict[str, str] = {}
    lowered = {c.lower(): c for c in columns}
    for target, names in SYNONYMS.items():
        if target in columns:
            continue
        for name in names:
            if name in lowered and lowered[name] not in proposal:
                proposal[lowered[name]] = target
                break
    if "conversations" in columns and "messages" not in columns:
        proposal["conversations"] = "messages"
    return proposal
