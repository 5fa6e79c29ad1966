"""Dataset fingerprints: local content hashes and Hub commit shas (from a local Hub server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from schemas.request import DatasetSource
from tasks.retrain import FingerprintKind, fingerprint_dataset, local_content_hash


@pytest.fixture
def hub(hf_server) -> Iterator[tuple[str, dict[str, str]]]:
    """The Hub double with dataset `org/chats` of two commits; its endpoint and their shas."""
    api = HfApi(endpoint=hf_server.url, token=hf_server.token)
    api.create_repo("org/chats", repo_type="dataset")
    first = api.upload_file(
        path_or_fileobj=b'{"text": "a"}\n', path_in_repo="a.jsonl", repo_id="org/chats",
        repo_type="dataset",
    )  # fmt: skip
    last = api.upload_file(
        path_or_fileobj=b'{"text": "b"}\n', path_in_repo="b.jsonl", repo_id="org/chats",
        repo_type="dataset",
    )  # fmt: skip
    yield hf_server.url, {"main": last.oid, "first": first.oid}


def test_local_hash_changes_with_content_and_names(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"text": "x"}\n')
    first = local_content_hash(folder)
    assert local_content_hash(folder) == first
    (folder / "a.jsonl").write_text('{"text": "y"}\n')
    second = local_content_hash(folder)
    assert second != first
    (folder / "a.jsonl").rename(folder / "b.jsonl")
    assert local_content_hash(folder) != second


def test_hub_fingerprint_is_the_revision_commit(hub: tuple[str, dict[str, str]]) -> None:
    endpoint, shas = hub
    main = fingerprint_dataset.fn(DatasetSource(path="org/chats"), endpoint=endpoint)
    assert main.kind is FingerprintKind.HUB_REVISION and main.value == shas["main"]
    pinned = fingerprint_dataset.fn(
        DatasetSource(path="org/chats", revision=shas["first"]), endpoint=endpoint
    )
    assert pinned.token == f"hub-revision:{shas['first']}"


def test_hub_fingerprint_names_missing_dataset_and_revision(
    hub: tuple[str, dict[str, str]],
) -> None:
    hub, _ = hub
    with pytest.raises(ValueError, match="dataset.path: Hub dataset 'org/other' was not found"):
        fingerprint_dataset.fn(DatasetSource(path="org/other"), endpoint=hub)
    with pytest.raises(ValueError, match="dataset.revision: 'v9' does not exist"):
        fingerprint_dataset.fn(DatasetSource(path="org/chats", revision="v9"), endpoint=hub)
