"""`lmft mcp` as a real subprocess: stdio, and streamable HTTP with a bearer token and a rate limit."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

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


class HttpServer(str):
    """The server's URL; `.log` is the file holding everything the server printed."""

    log: Path


@pytest.fixture
def http_server(prefect_server, tmp_path):
    """`lmft mcp --http` on a free port, allowing a burst of 12 requests then one every 10 s."""
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
        "12",
    ]
    log = tmp_path / "mcp-http.log"
    output = open(log, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
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
                    f"lmft mcp --http did not start: {log.read_text()[-2000:]}"
                ) from None
            time.sleep(0.2)
    server = HttpServer(url)
    server.log = log
    yield server
    process.terminate()
    process.wait(timeout=20)
    output.close()


async def test_stdio_subprocess_serves_the_tools(prefect_server):
    transport = StdioTransport(
        command=sys.executable, args=["-m", "cli", "mcp"], env=prefect_env(), cwd=str(ROOT)
    )
    async with Client(transport) as client:
        assert "create_job" in {tool.name for tool in await client.list_tools()}
        missing = str(uuid.uuid4())
        result = await client.call_tool("get_job_status", {"run_id": missing})
    assert result.structured_content["error"].startswith(f"no flow run with id {missing}")


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


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
        # every tool, the registry readers too (14: the 12 of the run, list_models, get_model)
        assert len(tools) == 14 and {"list_models", "get_model"} <= {t.name for t in tools}
        result = await client.call_tool("list_jobs", {"limit": 1})
        assert result.structured_content["error"] is None


async def test_http_answers_a_burst_over_the_limit_with_429_and_retry_after(http_server: str):
    headers = {
        "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {TOKEN}",
    }
    async with httpx.AsyncClient() as http:
        answers = [
            await http.post(http_server, json=INITIALIZE, headers=headers) for _ in range(20)
        ]
    statuses = [a.status_code for a in answers]
    assert statuses[:12] == [200] * 12  # the burst
    assert statuses.count(429) >= 5  # then one every 10 s at most
    limited = answers[statuses.index(429)]
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 10  # one request every 10 s
    assert limited.json()["error"] == "rate_limited"


async def test_http_throttles_a_burst_of_wrong_tokens(http_server: str):
    headers = {"Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient() as http:
        statuses = [
            (
                await http.post(
                    http_server,
                    json=INITIALIZE,
                    headers={**headers, "Authorization": f"Bearer wrong-{i:04d}-{TOKEN}"},
                )
            ).status_code
            for i in range(100)
        ]
        after = await http.post(
            http_server, json=INITIALIZE, headers={**headers, "Authorization": f"Bearer {TOKEN}"}
        )
    assert statuses.count(401) <= 10  # a burst of 10 failed authentications, then refused
    assert statuses.count(429) >= 90
    assert after.status_code == 429  # even the right token waits until the allowance refills
    assert int(after.headers["Retry-After"]) >= 1


async def test_a_token_in_the_query_string_is_refused_and_never_logged(http_server: str):
    headers = {"Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{http_server}?token={TOKEN}&access_token={TOKEN}", json=INITIALIZE, headers=headers
        )
        logged = await http.post(f"{http_server}?x=1", json=INITIALIZE, headers=headers)
    assert answer.status_code == 400 and "Authorization" in answer.json()["error_description"]
    assert TOKEN not in answer.text
    assert logged.status_code == 401
    time.sleep(1)  # the access log is written after the response
    log = http_server.log.read_text()
    assert "POST /mcp" in log  # requests are logged ...
    assert TOKEN not in log and "x=1" not in log  # ... without their query strings


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

    monkeypatch.setenv("LMFT_MCP_TOKEN", " " * 16)
    result = CliRunner().invoke(app, ["mcp", "--http"])
    assert result.exit_code == 2
    assert "must not contain spaces" in result.output


def test_refuses_to_start_without_a_prefect_api():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}):
        result = CliRunner().invoke(app, ["mcp"])
    assert result.exit_code == 2
    assert "PREFECT_API_URL is not set" in result.output
