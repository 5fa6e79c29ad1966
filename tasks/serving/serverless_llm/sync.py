"""Run serverless-llm's own generators after `config/models.py` changed.

The repository keeps three lists in step with `config/models.py`: the `model` choice
list of `.github/workflows/inference.yml` (`scripts/sync_workflow_choices.py`), the
frontend's `models.json` (`scripts/generate_models_json.py`) and the gateway's routes
(`MODEL_ID_TO_SERVICE` and `DEFAULT_LOCAL_ENDPOINTS`, computed inside `config/models.py`
itself, so the entry registers the route). This module runs whichever
scripts the clone has, then checks that the dispatch input will accept the new name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from pydantic import BaseModel

from tasks.serving.serverless_llm.names import check_model_name, check_workflow_file

SYNC_WORKFLOW_CHOICES = Path("scripts/sync_workflow_choices.py")
GENERATE_MODELS_JSON = Path("scripts/generate_models_json.py")
MODELS_JSON = Path("app/chat/frontend/public/models.json")


class SyncError(RuntimeError):
    """A generator script failed, or its output does not list the model."""


class SyncReport(BaseModel):
    scripts_run: list[str]
    workflow_has_choice: bool


def _run_script(clone: Path, script: Path) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1"}
    completed = subprocess.run(
        [sys.executable, str(script)],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if completed.returncode != 0:
        raise SyncError(
            f"{script} failed (exit {completed.returncode}): {completed.stderr.strip()[-500:]}"
        )
    return completed.stdout


def _other_models(clone: Path) -> list[dict]:
    """The entries of models.json that generate_models_json.py does not own (the API models)."""
    path = clone / MODELS_JSON
    if not path.exists():
        return []
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SyncError(f"{MODELS_JSON} is not valid JSON (line {exc.lineno}): {exc.msg}") from None
    models = document.get("models") if isinstance(document, dict) else None
    return [m for m in models or [] if isinstance(m, dict) and m.get("type") != "self-hosted"]


def workflow_choices(clone: Path, workflow: str) -> list[str] | None:
    """The `model` choice options of a workflow_dispatch workflow, or None when it has no choice list."""
    path = clone / ".github" / "workflows" / check_workflow_file(workflow)
    if not path.exists():
        raise SyncError(
            f"{path.relative_to(clone)} does not exist in the repository; check the target's inference_workflow"
        )
    data = yaml.safe_load(path.read_text()) or {}
    triggers = data.get("on", data.get(True, {})) or {}
    model_input = ((triggers.get("workflow_dispatch") or {}).get("inputs") or {}).get("model") or {}
    if model_input.get("type") != "choice":
        return None
    return [str(option) for option in model_input.get("options") or []]


def run_sync_scripts(
    clone: Path, name: str, workflow: str, *, require_choice: bool = True
) -> SyncReport:
    """Run the repository's generators (when present) and check `name` is dispatchable."""
    check_model_name(name)
    ran = []
    if (clone / SYNC_WORKFLOW_CHOICES).exists():
        _run_script(clone, SYNC_WORKFLOW_CHOICES)
        ran.append(str(SYNC_WORKFLOW_CHOICES))
    if (clone / GENERATE_MODELS_JSON).exists():
        before = _other_models(clone)
        # The script updates models.json in place; what it prints is only the self-hosted
        # list, for the frontend build (fetch-models.mjs), and is never written anywhere.
        _run_script(clone, GENERATE_MODELS_JSON)
        after = _other_models(clone)
        lost = [entry for entry in before if entry not in after]
        if lost:
            raise SyncError(
                f"{GENERATE_MODELS_JSON} dropped {len(lost)} of the {len(before)} API (not self-hosted) "
                f"entries of {MODELS_JSON}, first {lost[0].get('id')!r}; nothing was committed. "
                "Fix the script on the base branch: it must keep every entry it does not generate"
            )
        ran.append(str(GENERATE_MODELS_JSON))
    choices = workflow_choices(clone, workflow)
    if require_choice and choices is not None and name not in choices:
        raise SyncError(
            f"{name!r} is not in the 'model' choices of {workflow} after running {ran or 'no sync script'}; "
            f"the dispatch would be refused. Add it there (scripts/sync_workflow_choices.py does this upstream)"
        )
    return SyncReport(scripts_run=ran, workflow_has_choice=choices is not None)
