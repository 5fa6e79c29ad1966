"""A Prefect worker serving the deployments (a subprocess against the test server), datasets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER_START_TIMEOUT = 180


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def prefect_env() -> dict[str, str]:
    """The environment a subprocess needs to reach the test server and share our files."""
    from prefect.settings import PREFECT_API_URL

    return {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PYTHONPATH": str(ROOT),
    }


def wait_for_deployments(names: list[str], process: subprocess.Popen, timeout: float) -> None:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        for name in names:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the flow worker exited with code {process.returncode}")
                try:
                    client.read_deployment_by_name(name)
                    break
                except ObjectNotFound:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"deployment {name} was not registered in {timeout} s"
                        ) from None
                    time.sleep(0.5)


@pytest.fixture(scope="session")
def flow_worker(prefect_server, lmft_home: Path, tmp_path_factory: pytest.TempPathFactory):
    """`deployments.serve` in a subprocess: registers the deployments and executes their runs."""
    from tests.mcp_adapter.flow_worker import APPROVAL_PROBE

    log = open(tmp_path_factory.mktemp("worker") / "worker.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.mcp_adapter.flow_worker"],
        cwd=ROOT,
        env=prefect_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        from deployments.serve import SERVED_FLOWS

        names = [name.value for name in SERVED_FLOWS] + [APPROVAL_PROBE]
        wait_for_deployments(names, process, WORKER_START_TIMEOUT)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


CHAT_ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Say hello number {i}"},
            {"role": "assistant", "content": f"Arr, hello {i}, matey!"},
        ]
    }
    for i in range(12)  # the validator wants at least 10 rows
]


@pytest.fixture(scope="session")
def chat_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pirate_chat.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in CHAT_ROWS))
    return path
