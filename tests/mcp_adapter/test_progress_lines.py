"""The MCP adapter reads back the eval-loss lines the training monitor logs."""

from __future__ import annotations

import pytest

from mcp_adapter.flow_runs import _EVAL_LINE, _MONITOR_LINE
from schemas.jobs import ProgressUpdate
from tasks.jobs.training import evaluation_line


@pytest.mark.parametrize(
    ("update", "expected"),
    [
        (
            {"step": 0, "total_steps": 30, "eval_loss": 2.5, "base_eval_loss": 2.5},
            ("2.5000", "0", None),
        ),
        (
            {"step": 12, "total_steps": 30, "eval_loss": 1.25, "base_eval_loss": 2.5},
            ("1.2500", "12", "2.5000"),
        ),
    ],
)
def test_eval_lines_round_trip(update, expected):
    line = evaluation_line(ProgressUpdate.model_validate(update))
    match = _EVAL_LINE.search(line)
    assert match is not None and match.groups() == expected
    assert _MONITOR_LINE.search(line) is None  # never mistaken for a training step
