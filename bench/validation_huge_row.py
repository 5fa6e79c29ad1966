"""Benchmark: `lmft validate` on a file whose one row is 200 MB, measured with `/usr/bin/time -v`.

    python bench/validation_huge_row.py            # 200 MB row (generated once into $TMPDIR)
    python bench/validation_huge_row.py --mb 50

Token counting must not tokenise such a row (16.8 GB RSS before it was bounded): a row with more
characters than `max_length` tokens can hold is counted as too long without tokenising it.
Prints the wall time and peak RSS of `lmft validate --json` with token counting (SmolLM2's
tokenizer and chat template), and what the report says about the row.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RSS_LIMIT_MB = 1024


def generate(path: Path, megabytes: int) -> None:
    """One conversation whose user message is `megabytes` MB of words, and ten short ones (min rows)."""
    partial = path.with_suffix(".partial")
    words = ("lorem ipsum dolor sit amet consectetur adipiscing elit " * 1024).encode()
    with open(partial, "wb") as out:
        out.write(b'{"messages":[{"role":"user","content":"')
        written = 0
        while written < megabytes * 1_000_000:
            out.write(words)
            written += len(words)
        out.write(b'"},{"role":"assistant","content":"Arr."}]}\n')
        for i in range(10):
            row = {
                "messages": [
                    {"role": "user", "content": f"Say hello number {i}"},
                    {"role": "assistant", "content": f"Arr, hello {i}!"},
                ]
            }
            out.write(json.dumps(row).encode() + b"\n")
    partial.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=200, help="Size of the huge row, in MB.")
    parser.add_argument(
        "--dir", type=Path, default=Path(tempfile.gettempdir()) / "lmft-bench-validation"
    )
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"one-row-{args.mb}mb.jsonl"
    if not path.exists():
        print(f"generating {path} ...", flush=True)
        generate(path, args.mb)
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "cli", "validate", str(path), "--json"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)[1])
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", result.stderr)[1]
    report = json.loads(result.stdout)
    stats = report["token_stats"] or {}
    long_rows = [i for i in report["warnings"] if i["code"] == "too_long"]
    print(f"file            {path} ({path.stat().st_size / 1e6:.0f} MB, 11 rows)")
    print(f"wall time       {wall}")
    print(f"peak RSS        {rss_kb / 1024:.0f} MB (limit {RSS_LIMIT_MB} MB)")
    print(
        f"token stats     {stats.get('rows')} rows, over max_length {stats.get('over_max_length')}, "
        f"counted without tokenising {stats.get('over_bound')} (bound {stats.get('bound_chars'):,} characters)"
    )
    for issue in long_rows:
        print(f"report          row {issue['row']}: {issue['message']}")
    if rss_kb / 1024 > RSS_LIMIT_MB:
        sys.exit(f"peak RSS above {RSS_LIMIT_MB} MB")


if __name__ == "__main__":
    main()
