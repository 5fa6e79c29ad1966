"""Keep the MCP server alive on GitHub Actions runners, behind a Cloudflare Tunnel.

    python -m operations.mcp_keepalive --port 8765 --instance mcp-blue-123 \\
        --public-url https://mcp.example.com --successor-workflow mcp-server.yml --successor-input slot=green
    python -m operations.mcp_keepalive check --public-url https://mcp.example.com --dispatch mcp-server.yml

The same timeline as the worker's keep-alive (`operations.keepalive.run_until_hand_over`):

1. Start `lmft mcp --http` on 127.0.0.1:PORT (stateless streamable HTTP, so any instance can
   answer any request) and the tunnel connector, `cloudflared tunnel run` with the tunnel
   token in $TUNNEL_TOKEN; restart either if it dies.
2. At the drain: dispatch the successor workflow (the other slot). Its connector joins the
   same tunnel as a replica, and Cloudflare spreads requests over both. Wait until the public
   URL's `/healthz` answers with the successor's instance name.
3. Then stop this connector with SIGTERM: cloudflared takes no new requests and finishes those
   in flight (`--grace-period`), while Cloudflare sends new ones to the successor. When it has
   exited, stop the server.

`check` is the health check: GET `/healthz` through the public URL; when it does not answer,
dispatch the server workflow (exit 0 if dispatched, 1 if unhealthy and nothing dispatched).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx
from pydantic import BaseModel, Field, SecretStr

from operations.github_workflows import WorkflowDispatchFailed, WorkflowTarget, dispatch_workflow
from operations.keepalive import (
    SECRET_ENV,
    HandoverSettings,
    KeepaliveReport,
    add_hand_over_arguments,
    hand_over_values,
    restart_limit_reached,
    run_until_hand_over,
)

logger = logging.getLogger("lmft.mcp_keepalive")

INSTANCE_ENV = "LMFT_MCP_INSTANCE"
"""The instance name `/healthz` answers with (`mcp_adapter.transports.INSTANCE_ENV`)."""
STATELESS_ENV = "FASTMCP_STATELESS_HTTP"
"""FastMCP's setting: a new transport per request, so any instance answers any request."""
TUNNEL_TOKEN_ENV = "TUNNEL_TOKEN"
"""cloudflared reads the tunnel token of `tunnel run` from this variable."""
HEALTH_PATH = "/healthz"


class McpKeepaliveSettings(HandoverSettings):
    """Where the server listens, how it is exposed, and how the successor is recognised."""

    port: int = Field(default=8765, ge=1, le=65535)
    instance: str = Field(default_factory=lambda: f"mcp-{socket.gethostname()}-{os.getpid()}")
    public_url: str | None = Field(
        default=None,
        description="The tunnel's public URL: the successor is serving when its /healthz answers there.",
    )
    grace_seconds: float = Field(
        default=30,
        ge=0,
        description="cloudflared's --grace-period: how long requests in flight may finish.",
    )
    connector_command: list[str] | None = Field(
        default=None, description="Command that exposes the port; default `cloudflared tunnel run`."
    )
    server_start_seconds: float = Field(default=120, gt=0)
    drain_seconds: float = 20 * 60


def cloudflared_command(settings: McpKeepaliveSettings) -> list[str]:
    """`cloudflared tunnel run` for a remotely managed tunnel (token in $TUNNEL_TOKEN; its public
    hostname routes to http://127.0.0.1:PORT, set in the Cloudflare dashboard)."""
    return [
        "cloudflared",
        "tunnel",
        "--no-autoupdate",
        "--grace-period",
        f"{settings.grace_seconds:g}s",
        "run",
    ]


def server_env() -> dict[str, str]:
    """The server's environment: neither the dispatch token nor the tunnel token."""
    return {k: v for k, v in os.environ.items() if k not in (*SECRET_ENV, TUNNEL_TOKEN_ENV)}


def connector_env() -> dict[str, str]:
    """The connector's: no MCP bearer token, no dispatch token."""
    return {k: v for k, v in os.environ.items() if k not in (*SECRET_ENV, "LMFT_MCP_TOKEN")}


def read_instance(base_url: str, *, timeout: float = 5.0) -> str | None:
    """The instance that answered `base_url/healthz`, or None when nothing healthy answered."""
    try:
        response = httpx.get(base_url.rstrip("/") + HEALTH_PATH, timeout=timeout)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        return response.json().get("instance")
    except (json.JSONDecodeError, AttributeError):
        return None


@dataclass
class McpServer:
    """`lmft mcp --http` and its tunnel connector, as one kept-alive service."""

    settings: McpKeepaliveSettings
    server: subprocess.Popen | None = None
    connector: subprocess.Popen | None = None
    starts: int = 0
    draining: bool = False
    _peers_seen: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.settings.instance

    @property
    def local_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    def start(self) -> None:
        restart_limit_reached(self, self.settings)
        self.starts += 1
        if not _running(self.server):
            logger.info("starting the MCP server %s on %s", self.name, self.local_url)
            env = {**server_env(), INSTANCE_ENV: self.name, STATELESS_ENV: "true"}
            self.server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cli",
                    "mcp",
                    "--http",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.settings.port),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
            )
            self._wait_for_server()
        if not _running(self.connector) and not self.draining:
            command = self.settings.connector_command or cloudflared_command(self.settings)
            logger.info("starting the tunnel connector: %s", command[0])
            self.connector = subprocess.Popen(
                command, env=connector_env(), stdin=subprocess.DEVNULL
            )

    def _wait_for_server(self) -> None:
        deadline = time.monotonic() + self.settings.server_start_seconds
        while read_instance(self.local_url, timeout=2) != self.name:
            if not _running(self.server):
                raise RuntimeError(
                    f"the MCP server exited with code {self.server.returncode} before answering; see its output above"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the MCP server did not answer on {self.local_url} within {self.settings.server_start_seconds:g} s"
                )
            time.sleep(0.5)

    def alive(self) -> bool:
        return _running(self.server) and _running(self.connector)

    def successor_serving(self) -> bool:
        if not self.settings.public_url or self.settings.successor is None:
            return True  # nothing to wait for: no public URL to ask, or no successor coming
        answered = read_instance(self.settings.public_url)
        if answered and answered != self.name:
            self._peers_seen.add(answered)
        return bool(self._peers_seen)

    def drain(self) -> None:
        """SIGTERM the connector: cloudflared stops taking requests and finishes those in flight."""
        self.draining = True
        if _running(self.connector):
            self.connector.send_signal(signal.SIGTERM)

    def busy(self) -> list[str]:
        return ["tunnel connector finishing requests in flight"] if _running(self.connector) else []

    def stop(self) -> None:
        for process in (self.connector, self.server):
            if _running(process):
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def hand_over(self, unfinished: list[str]) -> list[str]:
        return []  # requests cut at the hand-over are retried by the client; nothing is queued here


def _running(process: subprocess.Popen | None) -> bool:
    return process is not None and process.poll() is None


def keep_mcp_alive(settings: McpKeepaliveSettings, *, clock=time.monotonic) -> KeepaliveReport:
    """Serve MCP until the hand-over time; start the successor and drain on the way."""
    return run_until_hand_over(McpServer(settings), settings, clock=clock)


# -- health check ----------------------------------------------------------------------------


class McpHealth(BaseModel):
    public_url: str
    healthy: bool
    instance: str | None = None
    dispatched: bool = False
    problem: str | None = None


def check_mcp(
    public_url: str, *, dispatch: WorkflowTarget | None = None, token: SecretStr | None = None
) -> McpHealth:
    """Is the MCP server answering through the tunnel? Dispatch `dispatch` when not."""
    instance = read_instance(public_url, timeout=15)
    health = McpHealth(public_url=public_url, healthy=instance is not None, instance=instance)
    if instance is None:
        health.problem = (
            f"{public_url}{HEALTH_PATH} does not answer; the MCP server or its tunnel is down"
        )
        if dispatch is not None and token is not None:
            dispatch_workflow(dispatch, token=token)
            health.dispatched = True
    return health


def _settings_from_args(args: argparse.Namespace) -> McpKeepaliveSettings:
    values = {
        **hand_over_values(args),
        "port": args.port,
        "public_url": args.public_url or None,
        "grace_seconds": args.grace_seconds,
    }
    if args.instance:
        values["instance"] = args.instance
    return McpKeepaliveSettings(**values)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["check"]:
        parser = argparse.ArgumentParser(prog="python -m operations.mcp_keepalive check")
        parser.add_argument("--public-url", required=True)
        parser.add_argument("--dispatch", metavar="WORKFLOW")
        parser.add_argument("--dispatch-input", action="append", default=[], metavar="KEY=VALUE")
        args = parser.parse_args(argv[1:])
        target = token = None
        if args.dispatch:
            if not os.environ.get("GITHUB_TOKEN"):
                print(
                    "error: --dispatch needs GITHUB_TOKEN (a token that may write actions)",
                    file=sys.stderr,
                )
                return 2
            inputs = dict(item.split("=", 1) for item in args.dispatch_input)
            try:
                target = WorkflowTarget.from_actions_env(workflow=args.dispatch, inputs=inputs)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            token = SecretStr(os.environ["GITHUB_TOKEN"])
        try:
            health = check_mcp(args.public_url, dispatch=target, token=token)
        except WorkflowDispatchFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(health.model_dump_json(indent=2))
        return 0 if health.healthy or health.dispatched else 1

    parser = argparse.ArgumentParser(
        prog="python -m operations.mcp_keepalive", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--instance")
    parser.add_argument("--public-url", default=os.environ.get("LMFT_MCP_PUBLIC_URL", ""))
    parser.add_argument("--grace-seconds", type=float, default=30)
    add_hand_over_arguments(parser, drain_seconds=20 * 60)
    args = parser.parse_args(argv)
    if not os.environ.get("LMFT_MCP_TOKEN"):
        print("error: set LMFT_MCP_TOKEN (the bearer token clients send)", file=sys.stderr)
        return 2
    if not os.environ.get(TUNNEL_TOKEN_ENV):
        print(f"error: set {TUNNEL_TOKEN_ENV} (the Cloudflare Tunnel token)", file=sys.stderr)
        return 2
    try:
        settings = _settings_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = keep_mcp_alive(settings)
    print(report.model_dump_json(indent=2))
    return 1 if report.dispatch_error else 0


if __name__ == "__main__":
    sys.exit(main())
