"""Writes tests/data/validation (run once; the files are committed)."""

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

root = Path("tests/data/validation")
(root / "bad").mkdir(parents=True, exist_ok=True)
(root / "good").mkdir(parents=True, exist_ok=True)


def conv(i):
    return [
        {"role": "user", "content": f"Question {i}?"},
        {"role": "assistant", "content": f"Answer {i}."},
    ]


def good_messages(n=12):
    return [{"messages": conv(i)} for i in range(n)]


def dump(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(r if isinstance(r, str) else json.dumps(r))
            f.write("\n")


def bad(name, line3):
    rows = good_messages()
    rows.insert(2, line3)  # the bad row is line 3
    dump(root / "bad" / f"{name}.jsonl", rows)


bad("not_json", '{"messages": [{"role": "user", "content": "hi"}')
bad("not_an_object", "[1, 2, 3]")
bad("missing_columns", {"messages": conv(99)} and {"id": 7, "note": "no conversation here"})
bad("messages_not_list", {"messages": "user: hi"})
bad("empty_messages", {"messages": []})
bad("message_not_object", {"messages": ["hi", {"role": "assistant", "content": "hello"}]})
bad("missing_role", {"messages": [{"content": "hi"}, {"role": "assistant", "content": "hello"}]})
bad("missing_content", {"messages": [{"role": "user"}, {"role": "assistant", "content": "hello"}]})
bad(
    "unrecognised_message_key",
    {
        "messages": [
            {"role": "user", "content": "hi", "mood": "happy"},
            {"role": "assistant", "content": "hello"},
        ]
    },
)
bad(
    "unrecognised_role",
    {"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
)
bad(
    "non_string_content",
    {"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "hello"}]},
)
bad(
    "no_assistant_message",
    {"messages": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "hi"}]},
)
bad(
    "consecutive_same_role",
    {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "hello"},
        ]
    },
)
bad(
    "empty_content",
    {"messages": [{"role": "user", "content": " \n\t"}, {"role": "assistant", "content": "hello"}]},
)
bad("mixed_formats", {"text": "A plain text row."})
bad("invalid_weight", {"messages": conv(5), "weight": -1})
bad("duplicate_row", {"messages": conv(0)})
# invalid UTF-8: raw bytes
rows = [json.dumps(r).encode() for r in good_messages()]
rows.insert(
    2,
    b'{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "ok"}]}',
)
(root / "bad" / "invalid_utf8.jsonl").write_bytes(b"\n".join(rows) + b"\n")
(root / "bad" / "empty_file.jsonl").write_bytes(b"")
dump(root / "bad" / "too_few_rows.jsonl", good_messages(3))
# Method-specific
dump(
    root / "bad" / "identical_chosen_rejected.jsonl",
    [{"prompt": f"Q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(2)]
    + [{"prompt": "Q", "chosen": "same", "rejected": "same"}]
    + [{"prompt": f"Q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(3, 12)],
)
dump(
    root / "bad" / "not_ending_with_assistant.jsonl",
    [
        {
            "prompt": [{"role": "user", "content": f"Q{i}"}],
            "chosen": [{"role": "assistant", "content": f"good {i}"}],
            "rejected": [{"role": "assistant", "content": f"bad {i}"}],
        }
        for i in range(2)
    ]
    + [
        {
            "prompt": [{"role": "user", "content": "Q"}],
            "chosen": [
                {"role": "assistant", "content": "good"},
                {"role": "user", "content": "more?"},
            ],
            "rejected": [{"role": "assistant", "content": "bad"}],
        }
    ]
    + [
        {
            "prompt": [{"role": "user", "content": f"Q{i}"}],
            "chosen": [{"role": "assistant", "content": f"good {i}"}],
            "rejected": [{"role": "assistant", "content": f"bad {i}"}],
        }
        for i in range(3, 12)
    ],
)
kto = [{"prompt": f"Q{i}", "completion": f"A{i}", "label": i % 2 == 0} for i in range(12)]
kto[2]["label"] = "yes"
dump(root / "bad" / "invalid_label.jsonl", kto)
dump(
    root / "bad" / "single_label_value.jsonl",
    [{"prompt": f"Q{i}", "completion": f"A{i}", "label": True} for i in range(12)],
)
dump(
    root / "bad" / "empty_field.jsonl",
    [{"prompt": f"Q{i}", "completion": f"A{i}"} for i in range(2)]
    + [{"prompt": "Q", "completion": "   "}]
    + [{"prompt": f"Q{i}", "completion": f"A{i}"} for i in range(3, 12)],
)
dump(
    root / "bad" / "non_string_field.jsonl",
    [{"text": f"Some text {i}."} for i in range(2)]
    + [{"text": ["not", "a", "string"]}]
    + [{"text": f"Some text {i}."} for i in range(3, 12)],
)
# Needs a column map: instruction/output
dump(
    root / "bad" / "needs_column_map.jsonl",
    [{"instruction": f"Do {i}", "output": f"Done {i}"} for i in range(12)],
)
dump(
    root / "bad" / "sharegpt.jsonl",
    [
        {"conversations": [{"from": "human", "value": f"Q{i}"}, {"from": "gpt", "value": f"A{i}"}]}
        for i in range(12)
    ],
)

# Good files, every format
g = root / "good"
dump(
    g / "messages.jsonl",
    [{**r, "weight": 1.5} if i == 4 else r for i, r in enumerate(good_messages())],
)
dump(g / "text.jsonl", [{"text": f"Some text number {i}."} for i in range(12)])
dump(g / "prompt_completion.jsonl", [{"prompt": f"Q{i}", "completion": f"A{i}"} for i in range(12)])
dump(
    g / "conversational_prompt_completion.jsonl",
    [
        {
            "prompt": [{"role": "user", "content": f"Q{i}"}],
            "completion": [{"role": "assistant", "content": f"A{i}"}],
        }
        for i in range(12)
    ],
)
dump(
    g / "prompt_only.jsonl", [{"prompt": f"Solve {i} + 1", "answer": str(i + 1)} for i in range(12)]
)
dump(
    g / "preference.jsonl",
    [{"prompt": f"Q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(12)],
)
dump(
    g / "preference_implicit.jsonl",
    [
        {
            "chosen": conv(i),
            "rejected": [conv(i)[0], {"role": "assistant", "content": f"Wrong {i}."}],
        }
        for i in range(12)
    ],
)
dump(
    g / "unpaired_preference.jsonl",
    [{"prompt": f"Q{i}", "completion": f"A{i}", "label": i % 2 == 0} for i in range(12)],
)
(g / "messages.json").write_text(json.dumps(good_messages()))
with gzip.open(g / "messages.jsonl.gz", "wt") as f:
    for r in good_messages():
        f.write(json.dumps(r) + "\n")
pq.write_table(pa.Table.from_pylist(good_messages()), g / "messages.parquet")
with open(g / "prompt_completion.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=["prompt", "completion"])
    w.writeheader()
    for i in range(12):
        w.writerow({"prompt": f"Q{i}, with a comma", "completion": f"A{i}\non two lines"})
(g / "folder").mkdir(exist_ok=True)
dump(g / "folder" / "part-1.jsonl", good_messages(6))
dump(g / "folder" / "part-2.jsonl", [{"messages": conv(i + 100)} for i in range(6)])
