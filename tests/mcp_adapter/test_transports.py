"""`lmft mcp` as a real subprocess: stdio, and streamable HTTP with a bearer token and a rate limit."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport, StreamableHttpTransport
from typer.testing import CliRunner

from cli.app import app
from tests.mcp_adapter.conftest import ROOT, prefect_env

pytestmark = pytest.mark.anyio

TOKEN = "test-token-" + uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def http_server(prefect_server):
    """`lmft mcp --http` on a free port, allowing a burst of 4 requests then one every 10 s."""
    port = free_port()
    env = {**prefect_env(), "LMFT_MCP_TOKEN": TOKEN}
    command = [
        sys.executable,
        "-m",
        "cli",
        "mcp",
        "--http",
        "--port",
        str(port),
        "--rate-limit",
        "0.1",
        "--burst",
        "4",
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(
                    f"lmft mcp --http did not start: {process.stderr.read().decode()[-2000:]}"
                ) from None
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=20)


async def test_stdio_subprocess_serves_the_tools(prefect_server):
    transport = StdioTransport(
        command=sys.executable, args=["-m", "cli", "mcp"], env=prefect_env(), cwd=str(ROOT)
    )
    async with Client(transport) as client:
        assert "create_job" in {tool.name for tool in await client.list_tools()}
        missing = str(uuid.uuid4())
        result = await client.call_tool("get_job_status", {"run_id": missing})
    assert result.structured_content["error"].startswith(f"no flow run with id {missing}")


async def test_http_requires_the_bearer_token(http_server: str):
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    headers = {"Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient() as http:
        anonymous = await http.post(http_server, json=initialize, headers=headers)
        wrong = await http.post(
            http_server,
            json=initialize,
            headers={**headers, "Authorization": "Bearer nope-" + TOKEN},
        )
    assert anonymous.status_code == 401
    assert wrong.status_code == 401
    assert TOKEN not in anonymous.text + wrong.text

    async with Client(StreamableHttpTransport(http_server, auth=TOKEN)) as client:
        tools = await client.list_tools()
        assert len(tools) == 12
        result = await client.call_tool("list_jobs", {"limit": 1})
        assert result.structured_content["error"] is None
        with pytest.raises(Exception, match="Rate limit exceeded"):
            for _ in range(5):
                await client.call_tool("list_jobs", {"limit": 1})


def test_http_refuses_to_start_without_a_token(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("LMFT_MCP_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["mcp", "--http"])
    assert result.exit_code == 2
    assert "LMFT_MCP_TOKEN" in result.output

    monkeypatch.setenv("LMFT_MCP_TOKEN", "tok-xyz123")
    result = CliRunner().invoke(app, ["mcp", "--http"])
    assert result.exit_code == 2
    assert "at least 16 characters" in result.output
    assert "tok-xyz123" not in result.output


def test_refuses_to_start_without_a_prefect_api():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}):
        result = CliRunner().invoke(app, ["mcp"])
    assert result.exit_code == 2
    assert "PREFECT_API_URL is not set" in result.output
