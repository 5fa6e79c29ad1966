"""Benchmark: structural validation of big conversational JSONL files, and token statistics.

    python bench/validation.py            # generates the files once (into $TMPDIR), then measures
    python bench/validation.py --rows 250000   # only the 250k file

Prints, side by side for the 1,000,000-row and 250,000-row files (3-6 turns per row):
  ours    `tasks.validation.check_dataset` (every structural rule; typed decode on all cores)
  (a)     a per-line `json.loads` + Python checks loop, as the popular data-prep notebooks do
  (b)     `pyarrow.json.read_json` parsing the file (no checks at all)
with wall seconds and peak RSS, each measured in a fresh subprocess; then token
statistics on 100,000 rows with SmolLM2's tokenizer and chat template (rows/s).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up other "
    "about out many then them these so some her would make like him into time has look two more write go see "
    "number no way could people my than first water been call who oil its now find long down day did get come "
    "made may part model data train token learn answer question because through where after"
).split()


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """A conversational JSONL file: 3-6 turns per row, about 750 bytes per row."""
    rng = random.Random(seed)
    partial = path.with_suffix(".partial")
    with open(partial, "w", encoding="utf-8") as out:
        for _ in range(rows):
            turns = rng.randint(3, 6)
            messages = []
            if turns % 2:
                messages.append({"role": "system", "content": " ".join(rng.choices(WORDS, k=10))})
            while len(messages) < turns or messages[-1]["role"] != "assistant":
                role = "user" if not messages or messages[-1]["role"] != "user" else "assistant"
                messages.append(
                    {"role": role, "content": " ".join(rng.choices(WORDS, k=rng.randint(12, 40)))}
                )
            out.write(json.dumps({"messages": messages}, separators=(",", ":")) + "\n")
    partial.replace(path)


# --- the measured programs (each runs in its own subprocess) --------------------------------


def run_ours(path: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from schemas.request import DatasetSource, FineTuneRequest
    from tasks.validation import check_dataset

    request = FineTuneRequest(dataset=DatasetSource(path=path))
    started = time.perf_counter()
    report = check_dataset(request, token_rows=0)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "rows": report.row_count,
        "errors": sum(report.error_counts.values()),
    }


def run_loop(path: str) -> dict:
    """The approach of the data-prep notebooks: json.loads each line, check in Python."""
    started = time.perf_counter()
    errors: dict[str, int] = {}
    rows = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            rows += 1
            try:
                row = json.loads(line)
            except ValueError:
                errors["not_json"] = errors.get("not_json", 0) + 1
                continue
            if not isinstance(row, dict):
                errors["not_an_object"] = errors.get("not_an_object", 0) + 1
                continue
            messages = row.get("messages")
            if not isinstance(messages, list) or not messages:
                errors["missing_messages"] = errors.get("missing_messages", 0) + 1
                continue
            roles = []
            for message in messages:
                if not isinstance(message, dict):
                    errors["message_not_object"] = errors.get("message_not_object", 0) + 1
                    continue
                if "role" not in message or "content" not in message:
                    errors["message_missing_key"] = errors.get("message_missing_key", 0) + 1
                if any(k not in ("role", "content", "name", "weight") for k in message):
                    errors["message_unrecognized_key"] = (
                        errors.get("message_unrecognized_key", 0) + 1
                    )
                if message.get("role") not in ("system", "user", "assistant", "tool"):
                    errors["unrecognized_role"] = errors.get("unrecognized_role", 0) + 1
                content = message.get("content")
                if not isinstance(content, str):
                    errors["non_string_content"] = errors.get("non_string_content", 0) + 1
                elif not content.strip():
                    errors["empty_content"] = errors.get("empty_content", 0) + 1
                roles.append(message.get("role"))
            if "assistant" not in roles:
                errors["no_assistant"] = errors.get("no_assistant", 0) + 1
            if any(a == b for a, b in zip(roles, roles[1:], strict=False)):
                errors["same_role_twice"] = errors.get("same_role_twice", 0) + 1
    return {"seconds": time.perf_counter() - started, "rows": rows, "errors": sum(errors.values())}


def run_arrow(path: str) -> dict:
    import pyarrow.json

    started = time.perf_counter()
    table = pyarrow.json.read_json(path)
    return {"seconds": time.perf_counter() - started, "rows": table.num_rows, "errors": 0}


def run_tokens(path: str, rows: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from schemas.request import DEFAULT_BASE_MODEL
    from schemas.validation import FormatKind
    from tasks.validation._sources import DataFile, iter_file_rows
    from tasks.validation._tokens import count_tokens, load_tokenizer

    tokenizer, name = load_tokenizer(DEFAULT_BASE_MODEL, None)
    data = DataFile(Path(path), Path(path).name, "jsonl")
    stats, _ = count_tokens(
        iter_file_rows(data, {}),
        kind=FormatKind.LANGUAGE_MODELING,
        conversational=True,
        tokenizer=tokenizer,
        tokenizer_name=name,
        max_length=1024,
        row_count=rows,
        limit=rows,
    )
    return {
        "seconds": stats.rows / stats.rows_per_second,
        "rows": stats.rows,
        "rows_per_second": stats.rows_per_second,
        "mean_tokens": stats.mean_tokens,
        "tokenizer": name,
        "chat_template": stats.chat_template,
    }


def measure(program: str, path: Path, *extra: str) -> dict:
    """Run one program in a fresh interpreter; add its peak RSS (and its workers')."""
    output = subprocess.run(
        [sys.executable, __file__, "--run", program, str(path), *extra],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the validation workers)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _child(program: str, path: str, extra: list[str]) -> None:
    result = {"ours": run_ours, "loop": run_loop, "arrow": run_arrow}.get(program)
    if program == "ours":
        sys.path.insert(0, str(ROOT))
        from tasks.validation import check_dataset  # noqa: F401  (imports are not timed)
    started = _cpu_seconds()
    measured = result(path) if result else run_tokens(path, int(extra[0]))
    measured["cpu_seconds"] = _cpu_seconds() - started
    measured["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    measured["worker_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(measured))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 250_000])
    parser.add_argument("--token-rows", type=int, default=100_000)
    parser.add_argument(
        "--dir", type=Path, default=Path(tempfile.gettempdir()) / "lmft-bench-validation"
    )
    parser.add_argument("--run", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        _child(args.run[0], args.run[1], args.run[2:])
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for rows in args.rows:
        path = args.dir / f"conversations-{rows}.jsonl"
        if not path.exists():
            print(f"generating {path} ...", flush=True)
            generate(path, rows)
        files[rows] = path
    print(
        f"\nmachine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (on a busy machine wall seconds are "
        "noisy; CPU seconds, summed over all processes, are steadier)\n"
    )
    header = (
        f"{'file':<24}{'program':<36}{'seconds':>9}{'vs (a)':>8}{'CPU s':>8}{'vs (a)':>8}"
        f"{'peak RSS MB':>22}{'rows':>11}{'errors':>8}"
    )
    print(header)
    print("-" * len(header))
    for rows, path in files.items():
        size = path.stat().st_size / 1e6
        results = {name: measure(name, path) for name in ("ours", "loop", "arrow")}
        base, base_cpu = results["loop"]["seconds"], results["loop"]["cpu_seconds"]
        labels = {
            "ours": "ours (check_dataset, all cores)",
            "loop": "(a) json.loads + Python checks",
            "arrow": "(b) pyarrow.json.read_json",
        }
        for name, result in results.items():
            rss = f"{result['rss_mb']:.0f}"
            if name == "ours":
                rss += f" + {result['worker_rss_mb']:.0f} per worker"
            print(
                f"{f'{rows:,} rows ({size:.0f} MB)':<24}{labels[name]:<36}{result['seconds']:>9.2f}"
                f"{base / result['seconds']:>7.1f}x{result['cpu_seconds']:>8.2f}{base_cpu / result['cpu_seconds']:>7.1f}x"
                f"{rss:>22}{result['rows']:>11,}{result['errors']:>8}"
            )
        print()
    token_file = files[min(files)]
    tokens = measure("tokens", token_file, str(args.token_rows))
    print(
        f"token statistics: {tokens['rows']:,} rows in {tokens['seconds']:.1f} s = {tokens['rows_per_second']:,.0f} rows/s "
        f"({tokens['tokenizer']}{' + chat template' if tokens['chat_template'] else ''}, "
        f"mean {tokens['mean_tokens']:.0f} tokens/row, peak RSS {tokens['rss_mb']:.0f} MB)"
    )


if __name__ == "__main__":
    main()
