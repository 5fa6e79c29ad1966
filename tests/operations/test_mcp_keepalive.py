"""The MCP server's keep-alive: two local instances hand over with no failed request from a
client polling through the hand-over. The Cloudflare Tunnel is replaced by a local port
(`tests.doubles.tunnel_edge`, with `tests.doubles.tunnel_connector` in place of cloudflared);
the successor's dispatch goes to a local server speaking GitHub's REST API."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from prefect.settings import PREFECT_API_URL
from pydantic import SecretStr

from operations.github_workflows import WorkflowTarget
from operations.keepalive import KeepaliveReport
from operations.mcp_keepalive import McpKeepaliveSettings, check_mcp, keep_mcp_alive
from tests.doubles.github_api import github_api
from tests.doubles.tunnel_edge import TunnelEdge
from tests.operations.test_keepalive import SteppedClock

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "mcp-test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings(
    edge: TunnelEdge, instance: str, successor: WorkflowTarget | None
) -> McpKeepaliveSettings:
    port = free_port()
    return McpKeepaliveSettings(
        port=port,
        instance=instance,
        public_url=edge.url,
        runtime_seconds=3600,
        drain_seconds=1800,
        poll_seconds=0.2,
        server_start_seconds=300,
        connector_command=[
            sys.executable,
            "-m",
            "tests.doubles.tunnel_connector",
            "--edge",
            edge.url,
            "--origin",
            f"http://127.0.0.1:{port}",
            "--id",
            instance,
            "--grace-period",
            "30",
        ],
        successor=successor,
        successor_token=SecretStr("ghs_dispatch") if successor else None,
    )


class Poller:
    """An MCP client calling `list_tools` through the tunnel, and a probe reading `/healthz`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ok = 0
        self.failures: list[str] = []
        self.instances: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._poll()))

    async def _poll(self) -> None:
        from fastmcp import Client
        from fastmcp.client.transports import StreamableHttpTransport

        transport = StreamableHttpTransport(
            f"{self.url}/mcp", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        async with Client(transport) as client, httpx.AsyncClient() as http:
            while not self.stop.is_set():
                try:
                    tools = await client.list_tools()
                    assert any(tool.name == "get_job_status" for tool in tools)
                    self.ok += 1
                    health = await http.get(f"{self.url}/healthz")
                    health.raise_for_status()
                    self.instances.append(health.json()["instance"])
                except Exception as exc:  # every failure is the test's finding
                    self.failures.append(repr(exc))
                await asyncio.sleep(0.3)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_two_instances_hand_over_without_a_failed_request(
    prefect_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    monkeypatch.setenv("LMFT_MCP_TOKEN", TOKEN)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the servers run this checkout's code
    monkeypatch.setenv("GITHUB_TOKEN", "ghs_dispatch")  # kept from the servers' environment
    reports: dict[str, KeepaliveReport] = {}
    with TunnelEdge() as edge, github_api(workflows=("mcp-server.yml",)) as github:
        successor = WorkflowTarget(
            repository="acme/lmft",
            workflow="mcp-server.yml",
            inputs={"slot": "green"},
            api_url=github.url,
        )
        blue_clock, green_clock = SteppedClock(), SteppedClock()
        blue = threading.Thread(
            target=lambda: reports.setdefault(
                "blue", keep_mcp_alive(settings(edge, "mcp-blue", successor), clock=blue_clock)
            )
        )
        green = threading.Thread(
            target=lambda: reports.setdefault(
                "green", keep_mcp_alive(settings(edge, "mcp-green", None), clock=green_clock)
            )
        )
        poller = Poller(edge.url)
        blue.start()
        try:
            wait_until(lambda: "mcp-blue" in edge.connectors, 300, "the blue instance")
            poller.thread.start()
            wait_until(lambda: poller.ok >= 5, 120, "the client's first answers")
            assert check_mcp(edge.url).instance == "mcp-blue"

            blue_clock.offset += 1800  # blue's drain: it dispatches its successor ...
            wait_until(lambda: github.dispatches, 60, "the successor's dispatch")
            assert [(d.workflow, d.inputs) for d in github.dispatches] == [
                ("mcp-server.yml", {"slot": "green"})
            ]
            assert "mcp-blue" in edge.connectors  # ... and serves until green answers
            green.start()  # GitHub starts the dispatched run
            blue.join(timeout=400)
            assert not blue.is_alive()
            served_by_blue = edge.served["mcp-blue"]
            time.sleep(3)  # the client goes on, through green alone
        finally:
            poller.stop.set()
            poller.thread.join(timeout=60)
            blue_clock.offset += 7200
            green_clock.offset += 7200
            blue.join(timeout=120)
            green.join(timeout=120)

    assert poller.failures == [], poller.failures[:5]
    assert poller.ok >= 10 and edge.unroutable == 0
    assert "mcp-blue" in poller.instances and poller.instances[-1] == "mcp-green"
    assert edge.served["mcp-blue"] == served_by_blue and edge.served["mcp-green"] > 0
    blue_report = reports["blue"]
    assert blue_report.successor_dispatched and blue_report.successor_serving
    assert blue_report.drained_cleanly and blue_report.worker_starts == 1
    assert github.dispatches[0].authorization.endswith("ghs_dispatch")


def test_health_check_dispatches_a_server_when_the_url_does_not_answer() -> None:
    with TunnelEdge() as edge, github_api(workflows=("mcp-server.yml",)) as github:
        target = WorkflowTarget(
            repository="acme/lmft",
            workflow="mcp-server.yml",
            inputs={"slot": "blue"},
            api_url=github.url,
        )
        health = check_mcp(edge.url, dispatch=target, token=SecretStr("ghs_dispatch"))
    assert not health.healthy and health.dispatched and "does not answer" in health.problem
    assert [d.inputs for d in github.dispatches] == [{"slot": "blue"}]


def test_each_secret_reaches_only_the_process_that_needs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from operations.mcp_keepalive import cloudflared_command, connector_env, server_env

    monkeypatch.setenv("GITHUB_TOKEN", "ghs_dispatch")
    monkeypatch.setenv("TUNNEL_TOKEN", "tunnel-secret")
    monkeypatch.setenv("LMFT_MCP_TOKEN", TOKEN)
    server, connector = server_env(), connector_env()
    assert server["LMFT_MCP_TOKEN"] == TOKEN
    assert "TUNNEL_TOKEN" not in server and "GITHUB_TOKEN" not in server
    assert connector["TUNNEL_TOKEN"] == "tunnel-secret"
    assert "LMFT_MCP_TOKEN" not in connector and "GITHUB_TOKEN" not in connector
    command = cloudflared_command(McpKeepaliveSettings(runtime_seconds=60, drain_seconds=30))
    assert command[:2] == ["cloudflared", "tunnel"] and command[-1] == "run"
    assert "tunnel-secret" not in " ".join(command)  # the token stays in the environment


def test_command_line_refuses_to_start_without_its_tokens(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from operations.mcp_keepalive import main

    monkeypatch.delenv("LMFT_MCP_TOKEN", raising=False)
    assert main(["--port", "8765"]) == 2
    assert "LMFT_MCP_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("LMFT_MCP_TOKEN", TOKEN)
    monkeypatch.delenv("TUNNEL_TOKEN", raising=False)
    assert main(["--port", "8765"]) == 2
    assert "TUNNEL_TOKEN" in capsys.readouterr().err
