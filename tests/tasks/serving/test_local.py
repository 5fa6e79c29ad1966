"""The local target: llama-cpp-python's server on the embedded SmolLM2 GGUF answers a chat."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tasks.jobs.base_model import embedded_gguf_path
from tasks.serving.endpoints import SmokeTestFailed, smoke_chat
from tasks.serving.local import (
    find_local_server,
    list_local_servers,
    start_local_server,
    stop_local_server,
)


def process_running(pid: int) -> bool:
    """True while `pid` runs; a zombie waiting for its parent to reap it has stopped running."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return not stat.read_text().split(") ", 1)[-1].startswith("Z")
    except FileNotFoundError:
        return False


def test_local_server_answers_is_reused_and_stops():
    gguf = str(embedded_gguf_path())
    server = start_local_server(gguf, "smol-test", n_ctx=512)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        models = httpx.get(f"{server.url}/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["smol-test"]
        result = smoke_chat(server.url, model="smol-test", prompt="What is the capital of France?")
        assert "paris" in result.reply.lower()
        assert result.completion_tokens and result.completion_tokens > 0
        # the same file under the same name is the same server
        assert start_local_server(gguf, "smol-test", n_ctx=512).pid == server.pid
        assert [s.name for s in list_local_servers()] == ["smol-test"]
    finally:
        assert stop_local_server("smol-test")
    assert find_local_server("smol-test") is None
    with pytest.raises(httpx.ConnectError):  # nothing listens on its port any more
        httpx.get(f"{server.url}/v1/models", timeout=5)
    assert not process_running(server.pid)
    assert not stop_local_server("smol-test")


def test_a_file_that_is_not_a_gguf_fails_with_the_server_log(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf at all")
    with pytest.raises(SmokeTestFailed, match="exited before it became healthy"):
        start_local_server(str(bogus), "bogus", health_timeout=60)
    assert find_local_server("bogus") is None
