"""Workflow hygiene: the linters pass on the workflows and catch an injected untrusted
expression in a `run:` step (on a temporary copy)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from operations.lint_workflows import Linter, LinterMissing, linter_command, main, run_linter

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
INJECTED_STEP = """      - name: Greet the issue
        run: echo "Thanks for ${{ github.event.issue.title }}"
"""


def installed(linter: Linter) -> bool:
    try:
        linter_command(linter, WORKFLOWS)
    except LinterMissing:
        return False
    return True


LINTERS = [
    pytest.param(
        linter,
        marks=pytest.mark.skipif(
            not installed(linter),
            reason=f"{linter.value} is not installed here (CI's lint job installs it)",
        ),
    )
    for linter in Linter
]


@pytest.fixture
def workflows_copy(tmp_path: Path) -> Path:
    target = tmp_path / "workflows"
    shutil.copytree(WORKFLOWS, target)
    return target


@pytest.mark.parametrize("linter", LINTERS)
def test_linter_passes_on_the_workflows_and_fails_on_an_injection(
    linter: Linter, workflows_copy: Path
) -> None:
    clean = run_linter(linter, workflows_copy)
    assert clean.ok, clean.output

    ci = workflows_copy / "ci.yml"
    ci.write_text(ci.read_text().rstrip("\n") + "\n" + INJECTED_STEP)
    injected = run_linter(linter, workflows_copy)
    assert not injected.ok
    assert "github.event.issue.title" in injected.output


def test_command_exit_code_follows_the_findings(workflows_copy: Path) -> None:
    if not installed(Linter.ZIZMOR):
        pytest.skip("zizmor is not installed")
    assert main(["--linter", "zizmor", str(workflows_copy)]) == 0
    ci = workflows_copy / "ci.yml"
    ci.write_text(ci.read_text().rstrip("\n") + "\n" + INJECTED_STEP)
    assert main(["--linter", "zizmor", str(workflows_copy)]) == 1


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.yml")), ids=lambda p: p.name)
def test_workflow_hygiene(path: Path) -> None:
    workflow = yaml.safe_load(path.read_text())
    assert workflow["permissions"] == {}, "grant permissions per job, none at the top"
    for name, job in workflow["jobs"].items():
        assert "permissions" in job and job.get("timeout-minutes"), name
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
            if "run" in step:
                assert "${{" not in step["run"], f"{name}: pass expressions to run: through env"
