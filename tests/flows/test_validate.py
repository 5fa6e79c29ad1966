"""The `validate` flow publishes the report as artifacts, grouped by code."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from schemas.request import DatasetSource, FineTuneRequest
from tasks.validation import _jsonl

BAD = Path(__file__).parents[1] / "data" / "validation" / "bad" / "missing_role.jsonl"


async def _artifact(key: str, flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
        (artifact,) = artifacts
        return artifact.data


def test_validate_flow_publishes_grouped_artifacts(prefect_server, monkeypatch):
    """Inside a flow run too, the file is checked by worker processes over small ranges."""
    from flows.validate import validate

    monkeypatch.setattr(_jsonl, "CHUNK_BYTES", 512)
    monkeypatch.setattr(_jsonl, "PARALLEL_MIN_BYTES", 0)
    request = FineTuneRequest(
        dataset=DatasetSource(path=str(BAD)), base_model="HuggingFaceTB/not-downloaded-here"
    )
    state = validate(request, min_rows=1, return_state=True)
    report = state.result()
    assert report.error_counts == {"missing_role": 1}
    assert report.warning_counts == {"tokens_not_counted": 1}

    run_id = state.state_details.flow_run_id
    markdown = asyncio.run(_artifact("dataset-validation", run_id))
    table = asyncio.run(_artifact("dataset-validation-problems", run_id))
    assert "| error | `missing_role` | 1 | 3 |" in markdown
    rows = json.loads(table) if isinstance(table, str) else table
    assert {
        "severity": "error",
        "code": "missing_role",
        "count": 1,
        "first rows": "3",
    }.items() <= rows[0].items()
    assert [r["code"] for r in rows] == ["missing_role", "tokens_not_counted"]
