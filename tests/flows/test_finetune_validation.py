"""The `finetune` flow stops at validation, before any job exists, on an invalid dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.request import DatasetSource, FineTuneRequest
from tasks.paths import jobs_dir
from tasks.validation import DatasetInvalid

BAD = Path(__file__).parents[1] / "data" / "validation" / "bad" / "consecutive_same_role.jsonl"


def test_finetune_stops_before_submission_on_an_invalid_dataset(prefect_server, tiny_llama):
    from flows.finetune import finetune

    before = sorted(jobs_dir().iterdir())
    request = FineTuneRequest(base_model=str(tiny_llama), dataset=DatasetSource(path=str(BAD)))
    state = finetune(request, return_state=True)
    assert state.is_failed()
    with pytest.raises(DatasetInvalid, match=r"consecutive_same_role.*row 3"):
        state.result()
    assert sorted(jobs_dir().iterdir()) == before  # no job directory was created
