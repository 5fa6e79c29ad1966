"""Dataset fingerprints: local content hashes and Hub commit shas (from a local Hub server)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from schemas.request import DatasetSource
from tasks.retrain import FingerprintKind, fingerprint_dataset, local_content_hash

SHAS = {"main": "a" * 40, "v2": "b" * 40}


class HubHandler(BaseHTTPRequestHandler):
    """The dataset-info route of the Hugging Face Hub API."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        parts = self.path.split("?")[0].strip("/").split("/")
        # /api/datasets/{namespace}/{name}[/revision/{revision}]
        if parts[:2] == ["api", "datasets"] and parts[2:4] == ["org", "chats"]:
            revision = parts[5] if len(parts) > 5 else "main"
            if revision in SHAS:
                return self._json(
                    200,
                    {"id": "org/chats", "sha": SHAS[revision], "private": False, "siblings": []},
                )
            return self._json(404, {"error": "Invalid rev id"}, error_code="RevisionNotFound")
        return self._json(404, {"error": "Repository not found"}, error_code="RepoNotFound")

    def _json(self, status: int, body: dict, error_code: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if error_code:
            self.send_header("X-Error-Code", error_code)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


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


def test_hub_fingerprint_is_the_revision_commit(hub: str) -> None:
    main = fingerprint_dataset.fn(DatasetSource(path="org/chats"), endpoint=hub)
    assert main.kind is FingerprintKind.HUB_REVISION and main.value == SHAS["main"]
    tagged = fingerprint_dataset.fn(DatasetSource(path="org/chats", revision="v2"), endpoint=hub)
    assert tagged.token == f"hub-revision:{SHAS['v2']}"


def test_hub_fingerprint_names_missing_dataset_and_revision(hub: str) -> None:
    with pytest.raises(ValueError, match="dataset.path: Hub dataset 'org/other' was not found"):
        fingerprint_dataset.fn(DatasetSource(path="org/other"), endpoint=hub)
    with pytest.raises(ValueError, match="dataset.revision: 'v9' does not exist"):
        fingerprint_dataset.fn(DatasetSource(path="org/chats", revision="v9"), endpoint=hub)
