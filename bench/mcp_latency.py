"""Latency of the MCP tools `create_job` and `get_job_status` against a running Prefect server.

    python -m bench.mcp_latency            # 200 calls of each
    python -m bench.mcp_latency --calls 50

Starts `prefect server start` on a free local port with a throw-away PREFECT_HOME, registers
the `finetune` deployment, then calls the tools through an in-memory `fastmcp.Client` (the
tool code and the Prefect API round trips, without a transport). No worker runs: the created
runs stay Scheduled, so the figures are the adapter's, not training's. Prints p50 and p95.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_prefect_server(
    home: Path, port: int, timeout: float = 180, *, database_url: str | None = None
) -> subprocess.Popen:
    """`prefect server start` on 127.0.0.1:port; return once /api/health answers.

    Its database is SQLite in `home`, or `database_url` (e.g. `postgresql+asyncpg://…`).
    """
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise TimeoutError(f"prefect server did not answer within {timeout} s")


def percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[94]


async def measure(calls: int, dataset: Path) -> dict[str, list[float]]:
    from fastmcp import Client

    from flows.finetune import finetune
    from mcp_adapter.server import server
    from schemas.flows import DeploymentName

    deployment = await finetune.ato_deployment(name=DeploymentName.FINETUNE.deployment_name)
    await deployment.aapply()
    request = {"dataset": {"path": str(dataset)}, "hyperparameters": {"max_steps": 10}}
    timings: dict[str, list[float]] = {"create_job": [], "get_job_status": []}
    run_ids = []
    async with Client(server) as client:
        for i in range(calls):
            started = time.perf_counter()
            result = await client.call_tool(
                "create_job",
                {"request": request, "idempotency_key": f"bench-{i}", "wait_seconds": 0},
            )
            timings["create_job"].append(time.perf_counter() - started)
            if result.structured_content["error"]:
                raise RuntimeError(result.structured_content["error"])
            run_ids.append(result.structured_content["run"]["id"])
        for run_id in run_ids:
            started = time.perf_counter()
            result = await client.call_tool("get_job_status", {"run_id": run_id})
            timings["get_job_status"].append(time.perf_counter() - started)
            if result.structured_content["error"]:
                raise RuntimeError(result.structured_content["error"])
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200, help="Calls of each tool.")
    calls = parser.parse_args().calls

    workdir = Path(tempfile.mkdtemp(prefix="lmft-mcp-bench-"))
    port = free_port()
    server = start_prefect_server(workdir / "prefect-home", port)
    try:
        # Point this process at the server before Prefect reads its settings.
        os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        os.environ["PREFECT_HOME"] = str(workdir / "prefect-home")
        os.environ.setdefault("LMFT_HOME", str(workdir / "lmft-home"))
        dataset = workdir / "chat.jsonl"
        row = {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Arr!"},
            ]
        }
        dataset.write_text(json.dumps(row) + "\n")

        import anyio

        timings = anyio.run(measure, calls, dataset)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"MCP tool latency against a local Prefect server ({calls} calls each, in-memory client)")
    print(f"{'tool':<16} {'p50 ms':>8} {'p95 ms':>8}")
    for tool, samples in timings.items():
        p50, p95 = percentiles(samples)
        print(f"{tool:<16} {p50 * 1000:>8.1f} {p95 * 1000:>8.1f}")


if __name__ == "__main__":
    main()
