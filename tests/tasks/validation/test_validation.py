"""Dataset validation: one bad file per problem class, good files in every format, sources,
token statistics, the property that the validator never raises, the CLI, the artifact."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.request import DatasetSource, FineTuneRequest, Method
from tasks.validation import (
    DatasetInvalid,
    FormatKind,
    IssueCode,
    ValidationReport,
    _jsonl,
    check_dataset,
    raise_on_errors,
)

DATA = Path(__file__).parents[2] / "data" / "validation"


def check(
    path: Path | str, method: Method = Method.SFT, *, min_rows: int = 1, **source
) -> ValidationReport:
    request = FineTuneRequest(dataset=DatasetSource(path=str(path), **source), method=method)
    return check_dataset(request, min_rows=min_rows, token_rows=0)


BAD = [
    # file, method, code, row (None: about the whole dataset)
    ("not_json", Method.SFT, IssueCode.NOT_JSON, 3),
    ("invalid_utf8", Method.SFT, IssueCode.INVALID_UTF8, 3),
    ("not_an_object", Method.SFT, IssueCode.NOT_AN_OBJECT, 3),
    ("missing_columns", Method.SFT, IssueCode.MISSING_COLUMNS, 3),
    ("messages_not_list", Method.SFT, IssueCode.MESSAGES_NOT_LIST, 3),
    ("empty_messages", Method.SFT, IssueCode.EMPTY_MESSAGES, 3),
    ("message_not_object", Method.SFT, IssueCode.MESSAGE_NOT_OBJECT, 3),
    ("missing_role", Method.SFT, IssueCode.MISSING_ROLE, 3),
    ("missing_content", Method.SFT, IssueCode.MISSING_CONTENT, 3),
    ("unrecognised_message_key", Method.SFT, IssueCode.UNRECOGNISED_MESSAGE_KEY, 3),
    ("unrecognised_role", Method.SFT, IssueCode.UNRECOGNISED_ROLE, 3),
    ("non_string_content", Method.SFT, IssueCode.NON_STRING_CONTENT, 3),
    ("no_assistant_message", Method.SFT, IssueCode.NO_ASSISTANT_MESSAGE, 3),
    ("consecutive_same_role", Method.SFT, IssueCode.CONSECUTIVE_SAME_ROLE, 3),
    ("empty_content", Method.SFT, IssueCode.EMPTY_CONTENT, 3),
    ("mixed_formats", Method.SFT, IssueCode.MIXED_FORMATS, 3),
    ("invalid_weight", Method.SFT, IssueCode.INVALID_WEIGHT, 3),
    ("empty_file", Method.SFT, IssueCode.EMPTY_FILE, None),
    ("identical_chosen_rejected", Method.DPO, IssueCode.IDENTICAL_CHOSEN_REJECTED, 3),
    ("not_ending_with_assistant", Method.DPO, IssueCode.NOT_ENDING_WITH_ASSISTANT, 3),
    ("invalid_label", Method.KTO, IssueCode.INVALID_LABEL, 3),
    ("single_label_value", Method.KTO, IssueCode.SINGLE_LABEL_VALUE, None),
    ("empty_field", Method.SFT, IssueCode.EMPTY_FIELD, 3),
    ("non_string_field", Method.SFT, IssueCode.NON_STRING_FIELD, 3),
    ("needs_column_map", Method.SFT, IssueCode.NEEDS_COLUMN_MAP, None),
    ("sharegpt", Method.SFT, IssueCode.NEEDS_COLUMN_MAP, None),
    ("messages", Method.DPO, IssueCode.UNSUITABLE_FORMAT, None),
]


@pytest.mark.parametrize(
    ("name", "method", "code", "row"), BAD, ids=[b[0] + "-" + b[1].value for b in BAD]
)
def test_bad_file_reports_its_code_at_its_row(name, method, code, row):
    path = (
        DATA / "bad" / f"{name}.jsonl" if name != "messages" else DATA / "good" / "messages.jsonl"
    )
    report = check(path, method)
    assert [(e.code, e.row) for e in report.errors] == [(code, row)], report.errors
    assert report.error_counts == {code.value: 1}
    with pytest.raises(DatasetInvalid, match=code.value):
        raise_on_errors(report)


def test_too_few_rows_uses_the_configured_minimum():
    path = DATA / "bad" / "too_few_rows.jsonl"
    report = check(path, min_rows=10)
    assert [(e.code, e.row) for e in report.errors] == [(IssueCode.TOO_FEW_ROWS, None)]
    assert check(path, min_rows=3).ok


def test_duplicate_rows_are_a_warning_naming_the_first_copy():
    report = check(DATA / "bad" / "duplicate_row.jsonl")
    assert report.ok
    assert [(w.code, w.row, w.message) for w in report.warnings] == [
        (IssueCode.DUPLICATE_ROW, 3, "the same as row 1")
    ]


GOOD = [
    ("messages.jsonl", Method.SFT, "conversational language modeling"),
    ("text.jsonl", Method.SFT, "standard language modeling"),
    ("prompt_completion.jsonl", Method.SFT, "standard prompt-completion"),
    ("conversational_prompt_completion.jsonl", Method.SFT, "conversational prompt-completion"),
    ("prompt_only.jsonl", Method.GRPO, "standard prompt-only"),
    ("preference.jsonl", Method.DPO, "standard preference (explicit prompt)"),
    ("preference_implicit.jsonl", Method.DPO, "conversational preference (implicit prompt)"),
    ("unpaired_preference.jsonl", Method.KTO, "standard unpaired preference"),
    ("messages.json", Method.SFT, "conversational language modeling"),
    ("messages.jsonl.gz", Method.SFT, "conversational language modeling"),
    ("messages.parquet", Method.SFT, "conversational language modeling"),
    ("prompt_completion.csv", Method.SFT, "standard prompt-completion"),
    ("folder", Method.SFT, "conversational language modeling"),
]


@pytest.mark.parametrize(("name", "method", "detected"), GOOD, ids=[g[0] for g in GOOD])
def test_good_file_passes(name, method, detected):
    report = check(DATA / "good" / name, method, min_rows=10)
    assert report.errors == []
    assert report.row_count == 12
    assert report.detected_format == detected
    assert method in report.suitable_methods
    raise_on_errors(report)


def test_grpo_lists_the_columns_reward_functions_receive():
    report = check(DATA / "good" / "prompt_only.jsonl", Method.GRPO)
    assert report.reward_columns == ["answer"]
    assert [w.code for w in report.warnings] == [IssueCode.REWARD_COLUMNS]


def test_column_map_is_proposed_and_then_accepted():
    report = check(DATA / "bad" / "needs_column_map.jsonl")
    assert report.column_map == {"instruction": "prompt", "output": "completion"}
    mapped = check(DATA / "bad" / "needs_column_map.jsonl", column_map=report.column_map)
    assert mapped.ok and mapped.detected_format == "standard prompt-completion"
    assert mapped.columns == ["prompt", "completion"]


def test_sharegpt_conversations_are_recognised_and_mapped():
    report = check(DATA / "bad" / "sharegpt.jsonl")
    assert report.column_map == {"conversations": "messages"}
    mapped = check(DATA / "bad" / "sharegpt.jsonl", column_map=report.column_map)
    assert mapped.ok, mapped.errors
    assert mapped.format_kind is FormatKind.LANGUAGE_MODELING and mapped.conversational


def test_a_column_map_naming_a_missing_column_is_an_error():
    report = check(DATA / "good" / "messages.jsonl", column_map={"dialogue": "messages"})
    assert [e.code for e in report.errors] == [IssueCode.COLUMN_MAP_UNKNOWN_COLUMN]


def test_folder_errors_name_the_file(tmp_path):
    (tmp_path / "a.jsonl").write_text((DATA / "good" / "folder" / "part-1.jsonl").read_text())
    (tmp_path / "b.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    report = check(tmp_path)
    assert [(e.code, e.file, e.row) for e in report.errors] == [
        (IssueCode.NO_ASSISTANT_MESSAGE, "b.jsonl", 1)
    ]


def test_row_numbers_are_exact_line_numbers_across_parallel_chunks(tmp_path, monkeypatch):
    """Small chunks force many ranges over two workers; blank lines still count as lines."""
    monkeypatch.setattr(_jsonl, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(_jsonl, "PARALLEL_MIN_BYTES", 0)
    good = json.dumps(
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    )
    bad_lines = {777, 1501, 2999}
    lines = []
    for number in range(1, 3001):
        if number in bad_lines:
            lines.append('{"messages": [{"role": "user", "content": "Q"}]}')
        elif number % 500 == 0:
            lines.append("")
        else:
            lines.append(good.replace('"Q"', f'"Q{number}"'))
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = check(path)
    assert [(e.code, e.row) for e in report.errors] == [
        (IssueCode.NO_ASSISTANT_MESSAGE, n) for n in sorted(bad_lines)
    ]
    assert report.row_count == 3000 - 6
    assert report.warning_counts == {"duplicate_row": 2}  # rows 1501 and 2999 repeat row 777


def test_an_unreachable_hub_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    report = check("trl-lib/Capybara")
    assert [e.code for e in report.errors] == [IssueCode.HUB_UNREACHABLE]
    assert "trl-lib/Capybara" in report.errors[0].message
    assert "local path" in report.errors[0].message


def test_a_missing_split_is_a_clear_error(tmp_path):
    """A dataset repository laid out as on the Hub, read through the same `datasets` call."""
    from tasks.validation._sources import SourceError, open_hub

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text((DATA / "good" / "messages.jsonl").read_text())
    source = DatasetSource.model_construct(
        path=str(tmp_path), split="validation", config=None, revision=None, column_map={}
    )
    with pytest.raises(SourceError) as caught:
        open_hub(source)
    assert caught.value.code is IssueCode.SPLIT_NOT_FOUND
    assert "validation" in str(caught.value)


def test_token_stats_use_the_tokenizer_and_chat_template(tokenizer_dir):
    from transformers import AutoTokenizer

    path = DATA / "good" / "messages.jsonl"
    request = FineTuneRequest(
        dataset=DatasetSource(path=str(path)), hyperparameters={"max_length": 24}
    )
    report = check_dataset(request, tokenizer_path=str(tokenizer_dir), min_rows=1)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = [json.loads(line)["messages"] for line in path.read_text().splitlines()]
    lengths = [
        len(
            tokenizer(tokenizer.apply_chat_template(r, tokenize=False), add_special_tokens=False)[
                "input_ids"
            ]
        )
        for r in rows
    ]
    stats = report.token_stats
    assert stats is not None and stats.exact and stats.chat_template
    assert (stats.rows, stats.total_tokens, stats.max_tokens) == (12, sum(lengths), max(lengths))
    too_long = [n for n, length in enumerate(lengths, start=1) if length > 24]
    assert too_long and stats.over_max_length == len(too_long)
    assert [w.row for w in report.warnings if w.code is IssueCode.TOO_LONG] == too_long
    assert report.ok  # too long is a warning: the trainer truncates


def test_token_counting_says_so_when_the_tokenizer_is_not_here(tmp_path):
    request = FineTuneRequest(
        dataset=DatasetSource(path=str(DATA / "good" / "text.jsonl")),
        base_model="HuggingFaceTB/not-downloaded-here",
    )
    report = check_dataset(request, min_rows=1)
    assert report.ok and report.token_stats is None
    assert [w.code for w in report.warnings] == [IssueCode.TOKENS_NOT_COUNTED]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.sampled_from(["user", "assistant", "system", " ", "hi"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "messages",
                    "role",
                    "content",
                    "text",
                    "prompt",
                    "completion",
                    "chosen",
                    "rejected",
                    "label",
                    "weight",
                    "conversations",
                    "from",
                    "value",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(
        st.one_of(st.binary(max_size=40), json_values.map(lambda v: json.dumps(v).encode())),
        max_size=8,
    ),
    method=st.sampled_from(list(Method)),
)
def test_the_validator_never_raises(tmp_path, lines, method):
    path = tmp_path / "random.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
    report = check(path, method)
    assert report.row_count <= len(lines)
    if report.row_count == 0:
        assert report.errors
    for issue in report.errors:
        assert issue.row is None or 1 <= issue.row <= max(len(lines), 1)


turn = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "tool", "bot"]),
        "content": st.sampled_from(["hi", " ", ""]),
    },
    optional={"weight": st.sampled_from([0, 1, 2])},
)
chat_rows = st.fixed_dictionaries(
    {"messages": st.lists(turn, max_size=4)},
    optional={"weight": st.sampled_from([1, -1, 0.5]), "text": st.text()},
)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(json_values | chat_rows, min_size=1, max_size=6))
def test_both_paths_agree(rows):
    """The typed fast path and the reference rules give the same codes and formats."""
    from tasks.validation._jsonl import _decoder, _fast_row, _slow_line

    for row in rows:
        line = json.dumps(row).encode()
        slow = _slow_line(line, {}, False)
        try:
            fast = _fast_row(_decoder({}, False).decode(line))
        except Exception:  # noqa: BLE001 - a refused typed decode goes to the reference rules
            fast = None
        if fast is not None:
            assert (fast[0], [i[0] for i in fast[1]]) == (slow[0], [i[0] for i in slow[1]])
    lines = [json.dumps(row).encode() for row in rows]
    general = _jsonl.check_lines(lines, {}, file_start=True, messages_only=False)
    specialised = _jsonl.check_lines(lines, {}, file_start=True, messages_only=True)
    assert (specialised.rows, specialised.issues, specialised.formats, specialised.first_rows) == (
        general.rows,
        general.issues,
        general.formats,
        general.first_rows,
    )


def test_cli_validate_exits_non_zero_on_errors():
    from typer.testing import CliRunner

    from cli.app import app

    runner = CliRunner()
    bad = runner.invoke(app, ["validate", str(DATA / "bad" / "missing_role.jsonl"), "--json"])
    assert bad.exit_code == 1, bad.output
    report = ValidationReport.model_validate_json(bad.stdout)
    assert [(e.code, e.row) for e in report.errors] == [(IssueCode.MISSING_ROLE, 3)]
    good = runner.invoke(
        app,
        [
            "validate",
            str(DATA / "good" / "preference.jsonl"),
            "--method",
            "dpo",
            "--model",
            "HuggingFaceTB/not-downloaded-here",
        ],
    )
    assert good.exit_code == 0, good.output
    assert "standard preference (explicit prompt)" in good.stdout


@pytest.mark.skipif(os.cpu_count() == 1, reason="needs two cores")
def test_parallel_and_single_process_results_match(tmp_path, monkeypatch):
    monkeypatch.setattr(_jsonl, "CHUNK_BYTES", 2048)
    source = (DATA / "bad" / "mixed_formats.jsonl").read_bytes() * 40
    path = tmp_path / "repeated.jsonl"
    path.write_bytes(source)
    monkeypatch.setattr(_jsonl, "PARALLEL_MIN_BYTES", 0)
    parallel = check(path)
    monkeypatch.setattr(_jsonl, "PARALLEL_MIN_BYTES", 10**12)
    single = check(path)
    assert parallel.model_dump(exclude={"seconds"}) == single.model_dump(exclude={"seconds"})
    assert parallel.error_counts == {"mixed_formats": 40}


def test_duplicates_across_files_name_the_first_copy(tmp_path):
    part = (DATA / "good" / "folder" / "part-1.jsonl").read_text()
    (tmp_path / "a.jsonl").write_text(part)
    (tmp_path / "b.jsonl").write_text(part.splitlines()[4] + "\n" + part.splitlines()[1] + "\n")
    report = check(tmp_path)
    assert report.ok
    assert [(w.file, w.row, w.message) for w in report.warnings] == [
        ("b.jsonl", 1, "the same as row 5 of a.jsonl"),
        ("b.jsonl", 2, "the same as row 2 of a.jsonl"),
    ]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    content=st.one_of(
        st.binary(max_size=60),
        st.lists(json_values | chat_rows, max_size=5).map(lambda rows: json.dumps(rows).encode()),
    ),
    suffix=st.sampled_from([".json", ".csv", ".jsonl.gz", ".parquet"]),
)
def test_the_validator_never_raises_on_other_formats(tmp_path, content, suffix):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(gzip.compress(content) if suffix.endswith(".gz") else content)
    report = check(path)
    assert report.errors or report.row_count > 0


def test_a_file_that_breaks_part_way_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_bytes(b"prompt,completion\n" + b"Q,A\n" * 20_000 + b"Q,\xff\xfe broken\n")
    report = check(path)
    assert [(e.code, e.file) for e in report.errors] == [(IssueCode.UNREADABLE_FILE, "broken.csv")]
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(gzip.compress((DATA / "good" / "messages.jsonl").read_bytes())[:-20])
    assert [e.code for e in check(truncated).errors] == [IssueCode.UNREADABLE_FILE]


def test_a_row_too_long_to_hold_is_counted_without_tokenising_it(tokenizer_dir, tmp_path):
    """Memory stays bounded: a row longer than max_length tokens can cover is never tokenised
    (`bench/validation_huge_row.py` measures a 200 MB row under 1 GB RSS)."""
    path = tmp_path / "huge.jsonl"
    huge = {
        "messages": [
            {"role": "user", "content": "lorem ipsum " * 250_000},  # 3 MB
            {"role": "assistant", "content": "Arr."},
        ]
    }
    small = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Arr."}]
    }
    path.write_text("\n".join(json.dumps(r) for r in (small, huge, small)) + "\n")
    request = FineTuneRequest(
        dataset=DatasetSource(path=str(path)), hyperparameters={"max_length": 64}
    )

    report = check_dataset(request, tokenizer_path=str(tokenizer_dir), min_rows=1)

    stats = report.token_stats
    assert stats.rows == 3 and stats.over_max_length == 1 and stats.over_bound == 1
    per_token = stats.bound_chars // 64
    assert per_token > 1 and stats.max_tokens == -(-3_000_004 // per_token)  # a lower bound
    [issue] = [i for i in report.warnings if i.code.value == "too_long"]
    assert issue.row == 2
    assert "3,000,004 characters" in issue.message and "without being tokenised" in issue.message
    assert report.warning_counts["too_long"] == 1
